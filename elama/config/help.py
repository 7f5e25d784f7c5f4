"""`--help` and `--cfg job` for the Hydra-configured commands (elama.train, elama.plan): the config
groups, every schema field with its type, default and docstring, and the composed config."""
from __future__ import annotations

import sys
import textwrap

from elama.config.fields import schema_fields
from elama.config.overrides import CONF_PACKAGE, config_groups

HELP_FLAGS = ("-h", "--help")
CFG_FLAGS = ("--cfg", "--print-config")


def _group_defaults() -> dict[str, str | None]:
    """Defaults list of conf/config.yaml: {group: option or None}."""
    from importlib import resources

    from omegaconf import OmegaConf

    text = resources.files(CONF_PACKAGE).joinpath("config.yaml").read_text()
    entries = OmegaConf.to_container(OmegaConf.create(text)).get("defaults", [])
    return {k: v for entry in entries if isinstance(entry, dict) for k, v in entry.items()}


def format_groups() -> str:
    defaults = _group_defaults()
    lines = ["Config groups (GROUP=OPTION picks conf/GROUP/OPTION.yaml):"]
    for group, options in config_groups().items():
        default = defaults.get(group)
        lines.append(f"  {group:<11} {' | '.join(options)}   (default: "
                     f"{default if default is not None else 'none, name one if needed'})")
    return "\n".join(lines)


def format_fields(width: int = 100) -> str:
    """Every field as `path: type = default`, its docstring indented below; sections as titles."""
    lines = ["Fields (section.field=value; defaults of the schema, which presets may change; "
             "`--cfg job` prints the composed values):"]
    for f in schema_fields():
        if f.type_name == "section":
            lines.append(f"\n  [{f.path}] ({f.default}) {f.doc}".rstrip())
            continue
        lines.append(f"  {f.path}: {f.type_name} = {f.default!r}")
        if f.doc:
            lines += textwrap.wrap(f.doc, width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)


def format_help(usage: str) -> str:
    return "\n\n".join([usage.strip(), format_groups(), format_fields()])


def config_overrides(args: list[str]) -> list[str]:
    """The Hydra overrides among a command's arguments (`key=value`, `+key=value`, `~key`)."""
    return [a for a in args if not a.startswith("-") and ("=" in a or a.startswith("~"))]


def format_composed(overrides: list[str]) -> str:
    """The config that these overrides compose to, as YAML (like Hydra's `--cfg job`)."""
    from omegaconf import OmegaConf

    from elama.config import load_config, to_dict

    return OmegaConf.to_yaml(OmegaConf.create(to_dict(load_config(overrides))))


def handle_config_flags(args: list[str], usage: str, prog: str) -> int | None:
    """Answer --help / --cfg job / --print-config and return the exit code; None when the
    arguments ask for neither (the command then runs)."""
    from elama.config.schema import ConfigError

    if any(a in HELP_FLAGS for a in args):
        print(format_help(usage))
        return 0
    flag = next((a for a in args if a in CFG_FLAGS), None)
    if flag is None:
        return None
    if flag == "--cfg":
        value = args[args.index(flag) + 1] if args.index(flag) + 1 < len(args) else ""
        if value != "job":
            print(f"{prog}: --cfg takes `job` (the composed config), got {value!r}", file=sys.stderr)
            return 2
    try:
        print(format_composed(config_overrides(args)), end="")
    except ConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    return 0
