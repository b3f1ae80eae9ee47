"""The run spec's shared parts: the block base class, the one override parser, spec.json I/O.

Each component owns its config block (training/spec.py: data, optimizer, parallelism, ...;
evaluation/config.py; the curation configs); `recipes/` composes them into one spec per stage
and profile. A spec is resolved and validated once (by the Dagster asset, or by the CLI for a
standalone run), written as `spec.json` beside the run's outputs and read by the program with
`--spec URI`; nothing downstream parses overrides again.

Overrides are `dotted.path -> value`, e.g. `{"optimizer.lr": 1e-3, "data.sources": "text,video"}`.
Values may be typed already (from the Dagster launchpad's typed fields) or strings (from
`--set key=value`); pydantic converts them by the field's annotation, never by the name of its
type, and one validation of the whole result names every bad field.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, Mapping

import pydantic
from pydantic import BaseModel, ConfigDict, TypeAdapter

from infra import storage

SPEC_FILE = "spec.json"


class SpecError(ValueError):
    """A bad profile name, override or value, raised before any training process starts."""


class Block(BaseModel):
    """A config block: keyword-only, frozen, unknown fields rejected, a docstring per field."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def error_text(error: pydantic.ValidationError) -> str:
    """`path: message (got value)` for each problem, joined: names every bad field at once."""
    parts = []
    for e in error.errors():
        where = ".".join(str(p) for p in e["loc"]) or "spec"
        got = f" (got {e['input']!r})" if e["type"] not in ("missing", "extra_forbidden") and "input" in e else ""
        parts.append(f"{where}: {e['msg']}{got}")
    return "; ".join(parts)


def validated(cls: type, data: Any, what: str):
    """`data` as an instance of `cls` (a pydantic model or dataclass), or SpecError naming `what`."""
    try:
        return TypeAdapter(cls).validate_python(data)
    except pydantic.ValidationError as e:
        raise SpecError(f"invalid {what}: {error_text(e)}") from None


def as_data(obj: Any) -> Any:
    """A block (pydantic model or dataclass, nested) as plain JSON-able data."""
    return TypeAdapter(type(obj)).dump_python(obj, mode="json")


def _field_annotations(cls: type) -> dict[str, Any]:
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return {name: f.annotation for name, f in cls.model_fields.items()}
    if dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    return {}


def block_class(annotation: Any) -> type | None:
    """The block class behind an annotation (`X` or `X | None`), if it is one."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if _field_annotations(candidate):
            return candidate
    return None


def parse_value(annotation: Any, raw: Any) -> Any:
    """A command-line string made ready for pydantic: `none` for optional fields, comma lists
    for sequence fields; typed values pass through (pydantic converts and checks them)."""
    if not isinstance(raw, str):
        return raw
    text = raw.strip()
    args = typing.get_args(annotation)
    optional = type(None) in args and (typing.get_origin(annotation) in (typing.Union, types.UnionType))
    if optional and text.lower() == "none":
        return None
    inner = [a for a in args if a is not type(None)] if optional else [annotation]
    if inner and typing.get_origin(inner[0]) in (tuple, list):
        return [s.strip() for s in text.split(",") if s.strip()]
    return text


def apply_overrides(obj: Any, overrides: Mapping[str, Any] | None, what: str):
    """A copy of block `obj` with dotted-path overrides, validated once. An unknown path raises
    SpecError listing the known fields at that level."""
    data = as_data(obj)
    for key, raw in (overrides or {}).items():
        cls, target, parts = type(obj), data, key.split(".")
        for depth, name in enumerate(parts):
            fields = _field_annotations(cls)
            if name not in fields:
                prefix = ".".join(parts[:depth])
                raise SpecError(f"unknown override {key!r} for {what}: no field {name!r}"
                                f"{' in ' + prefix if prefix else ''}; known: {sorted(fields)}")
            if depth == len(parts) - 1:
                target[name] = parse_value(fields[name], raw)
            else:
                cls = block_class(fields[name])
                if cls is None:
                    raise SpecError(f"unknown override {key!r} for {what}: {name!r} has no fields")
                if not isinstance(target.get(name), dict):  # an optional block this spec does not use
                    raise SpecError(f"override {key!r}: {what} has no {name!r} block")
                target = target[name]
    return validated(type(obj), data, what)


def flat_params(obj: Any, prefix: str = "") -> dict[str, str]:
    """`block.field -> value` strings of a spec, for MLflow params (nested phases as JSON)."""
    out = {}
    for key, value in (as_data(obj) if not isinstance(obj, dict) else obj).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_params(value, name + "."))
        else:
            out[name] = value if isinstance(value, str) else json.dumps(value)
    return out


def write_spec(spec: BaseModel, folder_uri: str) -> str:
    """Write `<folder>/spec.json`; returns its URI."""
    uri = storage.join(folder_uri, SPEC_FILE)
    storage.write_text(uri, spec.model_dump_json(indent=1))
    return uri


def read_spec(cls: type[BaseModel], uri: str) -> BaseModel:
    """Load a spec.json the resolver wrote (a schema check of the file, not a re-resolution)."""
    if not storage.exists(uri):
        raise SpecError(f"no run spec at {uri}")
    try:
        return cls.model_validate_json(storage.read_text(uri))
    except pydantic.ValidationError as e:
        raise SpecError(f"run spec {uri} is invalid: {error_text(e)}") from None


def spec_params(spec: pydantic.BaseModel) -> dict[str, str]:
    """A resolved spec as flat MLflow params (the specs of phases are in spec.json; their names,
    steps and overrides are here)."""
    data = spec.model_dump(mode="json", exclude={"phases": {"__all__": {"spec"}}} if getattr(spec, "phases", None) else None)
    return flat_params(data)
