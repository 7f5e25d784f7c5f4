"""Instruction data offline (tools/preprocess_data.py --format chat): ids and masks on disk as
render() makes them, counts per area and task, every reject counted with file and line; mixtures
by area and task (epochs or samples) and the budget report; the packed sequence dataset."""
from __future__ import annotations

import json

import numpy as np
import pytest

from elama.config.schema import SftDataConfig, SftTask
from elama.data.sft.chat import ChatFields, record_messages, render
from elama.data.sft.dataset import SftSequences
from elama.data.sft.mixture import budget, format_budget, group_values, plan_pass
from elama.data.sft.store import SftDataError, open_dataset
from elama.data.sft.synthetic import all_tasks, train_records
from elama.tokenizer import load_tokenizer
from tools.preprocess_data import main as preprocess_main

BAD = [
    "not json",
    "",
    json.dumps({"messages": [{"role": "assistant", "content": "hi"}], "area": "a", "task": "t"}),
    json.dumps({"input_field": "q", "output_field": "  ", "area": "a", "task": "t"}),
    json.dumps({"input_field": "q " * 400, "output_field": "x", "area": "a", "task": "t"}),
    json.dumps({"text": "no conversation"}),
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft_data")
    records = train_records(all_tasks(), 6, seed=0)
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    lines[5:5] = BAD  # bad records in the middle: lines 6..11
    (root / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    code = preprocess_main(["--format", "chat", "--input", str(root / "train.jsonl"),
                            "--output-prefix", str(root / "train"), "--max-seq-len", "200",
                            "--max-reject-fraction", "0.2"])
    return {"root": root, "records": records, "code": code, "prefix": str(root / "train")}


def test_manifest_counts_every_record_and_reject(dataset):
    assert dataset["code"] == 0
    data = open_dataset(dataset["prefix"])
    m = data.manifest
    assert m["examples_read"] == len(dataset["records"]) + len(BAD)
    assert m["examples_written"] == len(dataset["records"]) == len(data.groups)
    assert m["examples_rejected_by_reason"] == {"bad_role_order": 1, "blank_line": 1,
                                                "empty_answer": 1, "malformed_json": 1,
                                                "missing_key": 1, "too_long": 1}
    assert m["examples_rejected"] == len(BAD)
    assert {(g["area"], g["task"]) for g in m["groups"]} == {
        (r["area"], r["task"]) for r in dataset["records"]}
    assert all(g["examples_written"] == 6 for g in m["groups"])
    assert sum(g["tokens_written"] for g in m["groups"]) == m["tokens_written"] == \
        int(data.lengths.sum())
    rejects = [json.loads(x) for x in open(dataset["prefix"] + ".rejects.jsonl")]
    assert sorted(r["line"] for r in rejects) == list(range(6, 12))
    assert all(r["file"].endswith("train.jsonl") for r in rejects)


def test_ids_and_masks_on_disk_are_the_rendered_ones(dataset):
    tok = load_tokenizer()
    data = open_dataset(dataset["prefix"])
    for i, record in enumerate(dataset["records"]):
        want = render(tok, record_messages(record, ChatFields()))
        ids, mask = data.example(i)
        assert ids.tolist() == want.ids and mask.tolist() == want.mask
        assert data.names[data.groups[i]] == (record["area"], record["task"])
    m = data.manifest
    assert m["answer_tokens"] == sum(int(data.example(i)[1].sum()) for i in range(len(data.groups)))


def test_too_many_rejects_fail_without_a_manifest(dataset, tmp_path, capsys):
    (tmp_path / "bad.jsonl").write_text("\n".join(BAD) + "\n")
    code = preprocess_main(["--format", "chat", "--input", str(tmp_path / "bad.jsonl"),
                            "--output-prefix", str(tmp_path / "bad")])
    assert code == 3 and "rejected" in capsys.readouterr().err
    with pytest.raises(SftDataError, match="cannot read the manifest"):
        open_dataset(str(tmp_path / "bad"))


def test_mixture_by_epochs_and_samples_and_the_budget(dataset):
    data = open_dataset(dataset["prefix"])
    epochs = SftDataConfig(prefix=dataset["prefix"], unit="epochs", mixture=[
        SftTask("concepts", "*", 2.0), SftTask("extraction", "brand_ner", 0.5)])
    values = group_values(data, epochs)
    order = plan_pass(data, values, epochs, seed=1, pass_index=0)
    drawn = {data.names[g]: int((data.groups[order] == g).sum()) for g in set(data.groups[order])}
    assert drawn == {("concepts", "category_mc"): 12, ("concepts", "color_mc"): 12,
                     ("extraction", "brand_ner"): 3}
    assert (plan_pass(data, values, epochs, seed=1, pass_index=0) == order).all()
    assert not (plan_pass(data, values, epochs, seed=1, pass_index=1) == order).all()
    rows = {(r["area"], r["task"]): r for r in budget(data, values, epochs, passes=1.5)}
    assert rows[("concepts", "color_mc")]["epochs"] == 3.0
    assert rows[("extraction", "brand_ner")]["drawn"] == 4.5
    assert not rows[("ranking", "query_rank")]["in_mixture"]
    assert "(not in mixture)" in format_budget(list(rows.values()), 10, 1.5)
    samples = SftDataConfig(prefix=dataset["prefix"], unit="samples", examples_per_pass=40,
                            mixture=[SftTask("ranking", "*", 3.0), SftTask("generation", "*", 1.0)])
    order = plan_pass(data, group_values(data, samples), samples, seed=1, pass_index=0)
    areas = [data.names[g][0] for g in data.groups[order]]
    assert areas.count("ranking") == 30 and areas.count("generation") == 10
    with pytest.raises(SftDataError, match=r"mixture\[0\]: nope/\*"):
        group_values(data, SftDataConfig(mixture=[SftTask("nope", "*", 1.0)]))


def test_packed_sequences_are_fuller_and_deterministic(dataset):
    data = open_dataset(dataset["prefix"])
    sft = SftDataConfig(prefix=dataset["prefix"])
    values = group_values(data, sft)
    packed = SftSequences(data, values, sft, seq_len_tokens=256, num_sequences=10, seed=3, pad_id=0)
    again = SftSequences(data, values, sft, seq_len_tokens=256, num_sequences=10, seed=3, pad_id=0)
    padded = SftSequences(data, values, SftDataConfig(packing=False), seq_len_tokens=256,
                          num_sequences=10, seed=3, pad_id=0)
    fill = lambda d: np.mean([float((d[i]["segment_ids"] >= 0).float().mean()) for i in range(len(d))])
    assert fill(packed) > 0.8 and fill(packed) > 2 * fill(padded)
    for i in range(len(packed)):
        assert all((packed[i][k] == again[i][k]).all() for k in packed[i])
    # every example of a pass is in exactly one sequence
    per_pass = len(data.groups)
    seen = np.concatenate(packed.bins)[:per_pass]
    assert sorted(seen.tolist()) == list(range(per_pass))
    with pytest.raises(SftDataError, match="longer than data.seq_len_tokens=32"):
        SftSequences(data, values, sft, seq_len_tokens=32, num_sequences=1, seed=3, pad_id=0)
