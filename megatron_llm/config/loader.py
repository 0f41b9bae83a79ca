"""YAML (safe_load) onto the typed dataclasses, `--set a.b=c` overrides, and writing the resolved config."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from megatron_llm.config.fields import describe_type, value_fits
from megatron_llm.config.schema import Config
from megatron_llm.errors import UsageError


def _accepts(annotation: Any, value: Any) -> tuple[bool, Any]:
    """Whether `value` fits the field type `annotation`; returns the (possibly coerced) value."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            ok, coerced = _accepts(option, value)
            if ok:
                return True, coerced
        return False, value
    if annotation is type(None):
        return value is None, value
    if origin is Literal:
        return value_fits(annotation, value), value
    if annotation is bool:
        return isinstance(value, bool), value
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str):  # YAML 1.1 reads `3e-4` (no dot) as a string
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    if annotation is str:
        return isinstance(value, str), value
    if annotation is list or origin is list:
        return isinstance(value, list), value
    if dataclasses.is_dataclass(annotation):
        return isinstance(value, annotation), value
    return True, value


def _nested_class(annotation: Any) -> type | None:
    """The dataclass of a nested mapping field (`X` or `X | None`), else None."""
    options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) \
        else (annotation,)
    return next((o for o in options if dataclasses.is_dataclass(o)), None)


def _section_hints(section_cls: type) -> dict[str, Any]:
    return typing.get_type_hints(section_cls)


def _apply(config: Config, dotted: str, value: Any, source: str) -> None:
    """Set `section.field` (or `section.field.sub` inside a nested mapping such as logging.wandb) to `value`."""
    parts = dotted.split(".")
    if len(parts) < 2:
        raise UsageError(f"{source}: {dotted!r} is not a `section.field` name")
    section_name, field_name = parts[0], parts[-1]
    section = getattr(config, section_name, None)
    if section is None or not dataclasses.is_dataclass(section):
        sections = ", ".join(f.name for f in dataclasses.fields(config))
        raise UsageError(f"{source}: unknown section {section_name!r} (sections: {sections})")
    for depth, name in enumerate(parts[1:-1], start=2):
        nested = _nested_class(_section_hints(type(section)).get(name))
        if nested is None:
            raise UsageError(f"{source}: unknown field {'.'.join(parts[:depth])!r} (not a mapping)")
        if getattr(section, name) is None:
            setattr(section, name, nested())
        section = getattr(section, name)
    hints = _section_hints(type(section))
    if field_name not in hints:
        raise UsageError(f"{source}: unknown field {dotted!r}")
    nested = _nested_class(hints[field_name])
    if nested is not None and isinstance(value, dict):
        setattr(section, field_name, nested())
        for key, item in value.items():
            _apply(config, f"{dotted}.{key}", item, source)
        return
    ok, coerced = _accepts(hints[field_name], value)
    if not ok:
        raise UsageError(f"{source}: {dotted} must be {describe_type(hints[field_name])}, got {value!r}")
    setattr(section, field_name, coerced)


def _line_of(text: str, section: str, key: str) -> int | None:
    """Best-effort line number of `key:` inside `section:` for error messages."""
    in_section = False
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not line.startswith((" ", "\t")):
            in_section = stripped.startswith(f"{section}:")
        elif in_section and stripped.startswith(f"{key}:"):
            return number
    return None


def load_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> Config:
    """Read a YAML config (or the defaults when `path` is None) and apply `key.path=value` overrides."""
    config = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"{path}: config file not found")
        text = path.read_text()
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise UsageError(f"{where}: invalid YAML: {getattr(error, 'problem', error)}") from None
        if not isinstance(raw, dict):
            raise UsageError(f"{path}: the top level must be a mapping of sections")
        for section_name, values in raw.items():
            if not isinstance(values, dict):
                raise UsageError(f"{path}: section {section_name!r} must be a mapping")
            for key, value in values.items():
                line = _line_of(text, section_name, key)
                _apply(config, f"{section_name}.{key}", value, f"{path}:{line}" if line else str(path))
    return apply_overrides(config, overrides)


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Apply `key.path=value` overrides (values read as YAML) to `config`, in order."""
    for override in overrides:
        if "=" not in override:
            raise UsageError(f"--set {override!r}: expected key.path=value")
        key, _, raw_value = override.partition("=")
        try:
            value = yaml.safe_load(raw_value) if raw_value != "" else None
        except yaml.YAMLError:
            value = raw_value
        _apply(config, key.strip(), value, f"--set {override}")
    return config


def config_to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Rebuild a Config from `config_to_dict` output (e.g. a checkpoint's saved config)."""
    config = Config()
    for section_name, values in raw.items():
        for key, value in values.items():
            _apply(config, f"{section_name}.{key}", value, "saved config")
    return config


def save_config(config: Config, path: str | os.PathLike) -> None:
    """Write the resolved config atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    os.replace(tmp, path)
