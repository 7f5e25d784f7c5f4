"""`--help` of elama.train and elama.plan lists the config groups and every schema field (type,
default, docstring); `--cfg job` prints the composed config; neither starts a process group."""
from __future__ import annotations

import dataclasses
import typing

import pytest
import torch.distributed as dist
import yaml

from elama import plan, train
from elama.config import ElamaConfig, load_config


def _schema_paths(cls=ElamaConfig, prefix="") -> list[str]:
    """Every field of the schema, walked here independently of elama.config.fields."""
    out, hints = [], typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, path = hints[f.name], prefix + f.name
        element = typing.get_args(tp)[0] if typing.get_origin(tp) is list else None
        if dataclasses.is_dataclass(tp):
            out += _schema_paths(tp, path + ".")
        else:
            out.append(path)
            if element is not None and dataclasses.is_dataclass(element):
                out += _schema_paths(element, path + "[].")
    return out


@pytest.mark.parametrize("command", [train.main, plan.main], ids=["train", "plan"])
def test_help_lists_groups_and_every_field(command, capsys):
    assert command(["--help"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    paths = _schema_paths()
    assert len(paths) > 80
    for path in paths:
        assert any(line.startswith(f"  {path}: ") for line in lines), path
    assert "  parallel.tp: int = 1" in lines
    assert "  model.kv_channels: int or null = None" in lines
    assert "Tensor parallel degree" in out and "Key/value heads (GQA groups)" in out
    for group, option in (("model", "llama3.1-70b"), ("optim", "wsd"), ("experiment", "cpt_8b_ecom"),
                          ("data", "synthetic")):
        assert any(line.split()[:1] == [group] and option in line for line in lines), group
    assert not dist.is_initialized()


def test_plan_help_keeps_its_own_options(capsys):
    assert plan.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--world-size" in out and "--gpus-per-node" in out and "data.seq_len_tokens: int" in out


@pytest.mark.parametrize("flags", [["--cfg", "job"], ["--print-config"]])
def test_composed_config_prints_as_yaml(flags, capsys):
    overrides = ["experiment=cpt_tiny_cpu", "parallel.tp=4", "optim.lr=0.5"]
    assert train.main(flags + overrides) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = dataclasses.asdict(load_config(overrides))
    assert printed == expected
    assert printed["parallel"]["tp"] == 4 and printed["train"]["train_steps"] == 60
    assert not dist.is_initialized()


def test_plan_prints_its_composed_config_without_its_options(capsys):
    assert plan.main(["--cfg", "job", "model=llama3.1-8b", "--world-size", "8", "parallel.tp=8"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["num_layers"] == 32 and printed["parallel"]["tp"] == 8


def test_composed_config_of_a_bad_override_is_an_error(capsys):
    assert train.main(["--cfg", "job", "parallel.tpp=2"]) == 2
    err = capsys.readouterr().err
    assert "parallel.tpp is not a field" in err and "did you mean parallel.tp" in err
    assert train.main(["--cfg", "all"]) == 2
    assert "--cfg takes `job`" in capsys.readouterr().err
