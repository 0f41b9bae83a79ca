"""Stage parameters: YAML mappings onto dataclasses, with errors that name the offending field."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


class ParamError(ValueError):
    """A bad parameter value; `field` is the dotted name under the stage (e.g. `bands`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        text = " or ".join(_describe(a) for a in options)
        return f"{text} or null" if len(options) < len(typing.get_args(annotation)) else text
    if origin is list:
        return f"a list of {_describe(typing.get_args(annotation)[0])}"
    if origin is dict:
        key, value = typing.get_args(annotation)
        return f"a mapping of {_describe(key)} to {_describe(value)}"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(annotation, str(annotation))


def coerce(annotation: Any, value: Any, field: str) -> Any:
    """`value` converted to the type `annotation`, or ParamError naming `field`."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(option, value, field)
            except ParamError:
                continue
        raise ParamError(field, f"expected {_describe(annotation)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ParamError(field, f"expected {_describe(annotation)}, got {value!r}")
        (item,) = typing.get_args(annotation)
        return [coerce(item, v, f"{field}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamError(field, f"expected {_describe(annotation)}, got {value!r}")
        key_type, value_type = typing.get_args(annotation)
        return {coerce(key_type, k, f"{field}.{k}"): coerce(value_type, v, f"{field}.{k}") for k, v in value.items()}
    if annotation is bool and isinstance(value, bool):
        return value
    if annotation is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if annotation is str and isinstance(value, str):
        return value
    raise ParamError(field, f"expected {_describe(annotation)}, got {value!r}")


def from_mapping(cls: type[T], mapping: Any) -> T:
    """An instance of dataclass `cls` from a YAML mapping; unknown or mistyped fields raise ParamError."""
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, dict):
        raise ParamError("(parameters)", f"expected a mapping of parameter names to values, got {mapping!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    values = {}
    for key, value in mapping.items():
        if key not in hints:
            raise ParamError(str(key), f"unknown parameter (expected one of: {', '.join(names)})")
        values[key] = coerce(hints[key], value, str(key))
        check_range(values[key], str(key))
    params = cls(**values)
    check = getattr(params, "check", None)
    if check is not None:
        check()
    return params


_FRACTION_NAMES = ("threshold", "min_score")


def check_range(value: Any, field: str) -> None:
    """Every numeric stage parameter is a count, length, threshold, ratio or seed: finite and >= 0; ratios,
    thresholds and scores are at most 1. Lists and mappings are checked item by item."""
    if isinstance(value, list):
        for i, item in enumerate(value):
            check_range(item, f"{field}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_range(item, f"{field}.{key}")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        require(math.isfinite(value), field, f"must be a finite number, got {value!r}")
        require(value >= 0, field, f"must be >= 0, got {value!r}")
        name = field.split(".")[0].split("[")[0]
        if name.endswith("_ratio") or name in _FRACTION_NAMES:
            require(value <= 1, field, f"must be between 0 and 1, got {value!r}")


def require(condition: bool, field: str, message: str) -> None:
    """Raise ParamError(field, message) unless `condition` holds."""
    if not condition:
        raise ParamError(field, message)


def as_dict(params: Any) -> dict[str, Any]:
    """Plain (JSON-able) dict of a params dataclass, for the resolved config and fingerprints."""
    return dataclasses.asdict(params)
