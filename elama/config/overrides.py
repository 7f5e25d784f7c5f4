"""What the command line may name: config groups (conf/<group>/<option>.yaml) and schema fields.
Unknown keys are refused with a suggestion, Hydra/OmegaConf errors turned into one line each."""
from __future__ import annotations

import functools
from importlib import resources

from elama.config.fields import find_field, normalize_path, type_problem, unknown_field_problem

CONF_PACKAGE = "elama_conf"


@functools.lru_cache(maxsize=None)
def config_groups() -> dict[str, tuple[str, ...]]:
    """{group: options} from the conf/ package: model, optim, data, experiment, ..."""
    root = resources.files(CONF_PACKAGE)
    return {d.name: tuple(sorted(f.name[:-5] for f in d.iterdir() if f.name.endswith(".yaml")))
            for d in sorted(root.iterdir(), key=lambda d: d.name)
            if d.is_dir() and not d.name.startswith(("_", "."))}


def _is_known(key: str) -> bool:
    return (key in config_groups() or key.split("/")[0] in config_groups()
            or find_field(key) is not None or key.startswith("hydra."))


def unknown_override_problems(overrides: list[str]) -> list[str]:
    """One problem per override naming neither a group nor a field (`+parallel.tpp=2`). An
    override Hydra cannot parse is left to compose, which reports its syntax error."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:
        return []
    return [unknown_field_problem(o.key_or_group, o.input_line) for o in parsed
            if o.package is None and not _is_known(o.key_or_group)]


def unknown_composed_keys(node, prefix: str = "") -> list[str]:
    """Keys in the composed config that the schema lacks (a YAML file or `+` override added
    them to a typed node, where OmegaConf.to_object would drop them silently)."""
    from omegaconf import DictConfig, ListConfig

    problems = []
    if isinstance(node, DictConfig):
        for key in node.keys():
            path = f"{prefix}{key}"
            if find_field(path) is None:
                problems.append(unknown_field_problem(path))
            else:
                problems += unknown_composed_keys(node._get_node(key), path + ".")
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            problems += unknown_composed_keys(node._get_node(i), f"{prefix[:-1]}[{i}].")
    return problems


def compose_problem(error) -> str:
    """One line for an OmegaConf error, keeping its cause: the key, the value and the type."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    full_key = getattr(error, "full_key", None) or ""
    message = getattr(error, "msg", None) or str(error)
    if isinstance(error, ValidationError) and full_key:
        return type_problem(full_key, message)
    if isinstance(error, (ConfigAttributeError, ConfigKeyError)) and full_key \
            and find_field(normalize_path(full_key)) is None:
        return unknown_field_problem(full_key)
    return f"{error.__class__.__name__}: {message}".replace("\n", " ")
