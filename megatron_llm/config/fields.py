"""What the schema says about each field: its documentation, its type in words, its allowed values.

A field is documented by the string literal written right after it (an attribute docstring, as megatron-core
does); Python keeps no trace of those at run time, so they are read from the class source with `ast`.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal


def attribute_docs(cls: type) -> dict[str, str]:
    """Field name -> the string literal that follows its annotated assignment, for `cls` and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body
        for statement, following in zip(body, body[1:]):
            if (
                isinstance(statement, ast.AnnAssign)
                and isinstance(statement.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[statement.target.id] = following.value.value.strip()
    return docs


def missing_docs(cls: type) -> list[str]:
    """Fields of the dataclass `cls` that have no (or an empty) attribute docstring."""
    docs = attribute_docs(cls)
    return [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]


def _without_none(annotation: Any) -> tuple[list[Any], bool]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = list(typing.get_args(annotation))
        nullable = type(None) in options
        return [o for o in options if o is not type(None)], nullable
    return [annotation], annotation is type(None)


def literal_choices(annotation: Any) -> tuple[Any, ...] | None:
    """The allowed values of a `Literal[...]` (or `Literal[...] | None`) annotation; None for other types."""
    options, _ = _without_none(annotation)
    if len(options) == 1 and typing.get_origin(options[0]) is Literal:
        return typing.get_args(options[0])
    return None


def describe_type(annotation: Any) -> str:
    """The type in the words error messages and the reference use: `int`, `float or null`, `one of a, b`."""
    options, nullable = _without_none(annotation)
    words = []
    for option in options:
        if typing.get_origin(option) is Literal:
            words.append("one of " + ", ".join(str(choice) for choice in typing.get_args(option)))
        elif option is list or typing.get_origin(option) is list:
            words.append("list")
        elif dataclasses.is_dataclass(option):
            words.append("mapping")
        else:
            words.append(getattr(option, "__name__", str(option).replace("typing.", "")))
    return " or ".join(words + (["null"] if nullable else []))


def field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"field {f.name!r} has no default")


@dataclass(frozen=True)
class FieldInfo:
    """One configuration field as `config show` prints it."""

    section: str
    name: str
    type: str
    default: Any
    value: Any
    doc: str

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"


@dataclass(frozen=True)
class SectionInfo:
    name: str
    doc: str
    fields: list[FieldInfo]


def sections(config: Any) -> list[SectionInfo]:
    """Every section of `config` (a Config instance) with every field's type, default, value and doc."""
    top_docs = attribute_docs(type(config))
    result = []
    for section_field in dataclasses.fields(config):
        section = getattr(config, section_field.name)
        cls = type(section)
        hints = typing.get_type_hints(cls)
        docs = attribute_docs(cls)
        infos = [
            FieldInfo(section_field.name, f.name, describe_type(hints[f.name]), field_default(f),
                      getattr(section, f.name), docs.get(f.name, ""))
            for f in dataclasses.fields(cls)
        ]
        result.append(SectionInfo(section_field.name, top_docs.get(section_field.name, ""), infos))
    return result


def choice_fields(config: Any) -> list[tuple[str, Any, Any]]:
    """(`section.field`, annotation, value) of every field whose annotation is a `Literal`, nested mappings
    (e.g. `optim.wsd.decay_style`) included."""
    result = []
    for name, annotation in typing.get_type_hints(type(config)).items():
        value = getattr(config, name)
        if literal_choices(annotation) is not None:
            result.append((name, annotation, value))
        elif dataclasses.is_dataclass(value):
            result += [(f"{name}.{key}", inner, item) for key, inner, item in choice_fields(value)]
    return result


def value_fits(annotation: Any, value: Any) -> bool:
    """Whether `value` is one of the allowed values of a Literal annotation (None only when nullable)."""
    choices = literal_choices(annotation)
    _, nullable = _without_none(annotation)
    if value is None:
        return nullable
    return any(type(value) is type(choice) and value == choice for choice in choices or ())
