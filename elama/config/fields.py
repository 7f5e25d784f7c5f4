"""The schema as a flat list of fields (dotted path, type, default, docstring), read from the
dataclasses and their attribute docstrings: for --help, for refusing unknown keys with a
suggestion, and for type errors that name the expected type."""
from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import re
import textwrap
import typing
from dataclasses import dataclass

from elama.config.schema import ElamaConfig

HELP_HINT = "`python -m elama.train --help` lists every field"


@dataclass(frozen=True)
class FieldInfo:
    path: str
    """Dotted path as an override names it; list elements appear as `[]` (data.train_blend[].weight)."""
    type_name: str
    """int, float, str, bool, 'int or null', 'list of BlendEntry', or 'section'."""
    default: object
    """Schema default (presets in conf/ may set another value); a section's dataclass name."""
    doc: str
    """The field's docstring in schema.py."""


@functools.lru_cache(maxsize=None)
def _attribute_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (a string literal right after `name: type = value`), which Python
    does not keep at run time: read from the class's source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body, docs = tree.body[0].body, {}
    for node, following in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def _type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union and type(None) in args:
        return " or ".join(_type_name(a) for a in args if a is not type(None)) + " or null"
    if origin in (list, typing.List):
        return f"list of {_type_name(args[0])}"
    return getattr(tp, "__name__", str(tp))


def _list_element(tp):
    return typing.get_args(tp)[0] if typing.get_origin(tp) in (list, typing.List) else None


@functools.lru_cache(maxsize=None)
def schema_fields(root: type = ElamaConfig, prefix: str = "") -> tuple[FieldInfo, ...]:
    """Every field of the schema in declaration order, sections included (type 'section')."""
    out, hints, docs = [], typing.get_type_hints(root), _attribute_docs(root)
    for f in dataclasses.fields(root):
        path, tp = prefix + f.name, hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.append(FieldInfo(path, "section", tp.__name__, docs.get(f.name, "")))
            out += schema_fields(tp, path + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out.append(FieldInfo(path, _type_name(tp), default, docs.get(f.name, "")))
        element = _list_element(tp)
        if element is not None and dataclasses.is_dataclass(element):
            out += schema_fields(element, path + "[].")
    return tuple(out)


def normalize_path(key: str) -> str:
    """`data.valid_blends.0.blend[1].weight` -> `data.valid_blends[].blend[].weight`."""
    key = re.sub(r"\[\d+\]", "[]", key)
    return re.sub(r"\.(\d+)(?=\.|$)", "[]", key)


def find_field(key: str) -> FieldInfo | None:
    path = normalize_path(key)
    return next((f for f in schema_fields() if f.path == path), None)


def unknown_field_problem(key: str, override: str | None = None) -> str:
    """'parallel.tpp is not a field of the config (did you mean parallel.tp?)'."""
    path = normalize_path(key)
    section, _, name = path.rpartition(".")
    siblings = [f.path for f in schema_fields() if f.path.rpartition(".")[0] == section]
    names = [p.rpartition(".")[2] for p in siblings]
    close = [f"{section}.{n}" if section else n for n in difflib.get_close_matches(name, names, 3, 0.5)]
    close = close or difflib.get_close_matches(path, [f.path for f in schema_fields()], 3, 0.6)
    if not close and not section:  # a key inside a list element: OmegaConf reports it bare
        leaves: dict[str, str] = {}
        for f in schema_fields():
            leaves.setdefault(f.path.rpartition(".")[2], f.path)
        close = [leaves[n] for n in difflib.get_close_matches(name, list(leaves), 3, 0.8)]
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    where = f"{override}: " if override and override != key else ""
    return f"{where}{key} is not a field of the config{hint}; {HELP_HINT}"


_CONVERT = re.compile(r"Value '(?P<value>.*)' (of type '\w+' could not be converted to \w+|"
                      r"is not a valid (?P<kind>\w+))", re.S)


def type_problem(full_key: str, message: str) -> str:
    """OmegaConf's 'Value 'two' of type 'str' could not be converted to Integer' as
    "parallel.tp=two: could not convert 'two' to int (parallel.tp: int, default 1)"."""
    m, info = _CONVERT.match(message), find_field(full_key)
    if not m or info is None:
        return f"{full_key}: {message.splitlines()[0]}"
    value = m.group("value")
    hint = " (true or false)" if info.type_name == "bool" else ""
    return (f"{full_key}={value}: could not convert {value!r} to {info.type_name}{hint} "
            f"({full_key}: {info.type_name}, default {info.default!r}: {info.doc})")
