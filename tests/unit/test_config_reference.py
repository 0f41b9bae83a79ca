"""`megatron-llm config show` and the README's generated reference: every field documented, values and
defaults as configured, bad choices rejected with the allowed values, the README block current.

The expectations come from elsewhere than the code under test: the fields from `dataclasses.fields`, the
documentation from a plain line-by-line reading of schema.py's text (not the `ast` extractor), defaults
from instantiating the dataclasses, values from the YAML file read with `yaml.safe_load`.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

import megatron_llm.config.schema as schema
from megatron_llm.cli import main as cli
from megatron_llm.config import Config, load_config
from megatron_llm.config.command import main as config_main
from megatron_llm.config.fields import attribute_docs, missing_docs, sections
from megatron_llm.config.reference import END_MARKER, START_MARKER, readme_block, render_markdown, render_text
from megatron_llm.config.validation import DTYPES, RECOMPUTE, config_problems
from megatron_llm.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples/configs/tiny.yaml"
FIELD_LINE = re.compile(
    r"^  (?P<key>\S+): (?P<type>.+?) = (?P<value>.*)  \(default: (?P<default>.*?)(?P<changed>; changed)?\)$"
)


def every_field() -> list[tuple[str, str, type]]:
    """(section, field, section class) of every field, walked independently of the code under test."""
    return [(s.name, f.name, s.default_factory) for s in dataclasses.fields(Config)
            for f in dataclasses.fields(s.default_factory)]


def source_docs(path: Path, class_name: str) -> dict[str, str]:
    """Field -> docstring by reading the class's lines: the line after `    name: ...` must be `    \"\"\"doc\"\"\"`."""
    lines = path.read_text().splitlines()
    start = lines.index(f"class {class_name}:")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(("class ", "@dataclass"))), len(lines))
    docs = {}
    for line, following in zip(lines[start:end], lines[start + 1:end]):
        name = re.match(r"^    (\w+): ", line)
        doc = re.match(r'^    """(.+)"""$', following)
        if name and doc:
            docs[name.group(1)] = doc.group(1)
    return docs


def shown_fields(output: str) -> dict[str, dict]:
    """`section.field` -> its parsed line and the documentation line under it, from `config show` text."""
    lines = output.splitlines()
    shown = {}
    for line, following in zip(lines, lines[1:] + [""]):
        match = FIELD_LINE.match(line)
        if match:
            shown[match["key"]] = dict(match.groupdict(), doc=following.strip() if following.startswith("      ")
                                       else "")
    return shown


def undocumented(shown: dict[str, dict], keys: list[str]) -> list[str]:
    return [key for key in keys if key not in shown or shown[key]["doc"] in ("", "(undocumented)")]


def as_yaml(text: str, expected: object) -> object:
    """A shown value read back as YAML (PyYAML wants a dot in a float, so `1e-05` is read with float()); a
    nested section (e.g. optim.wsd) reads back as the dataclass it stands for."""
    if isinstance(expected, float):
        return float(text)
    value = yaml.safe_load(text)
    if dataclasses.is_dataclass(expected) and isinstance(value, dict):
        return type(expected)(**value)
    return value


def test_show_prints_every_field_with_its_source_docstring(capsys):
    assert cli(["config", "show"]) == 0
    shown = shown_fields(capsys.readouterr().out)
    keys = [f"{section}.{name}" for section, name, _ in every_field()]
    assert len(keys) > 60
    assert sorted(shown) == sorted(keys)
    assert undocumented(shown, keys) == []
    schema_file = Path(schema.__file__)
    for section, name, cls in every_field():
        from_source = source_docs(schema_file, cls.__name__)
        assert from_source.get(name), f"{cls.__name__}.{name} has no one-line docstring under it in schema.py"
        assert shown[f"{section}.{name}"]["doc"] == from_source[name]
        default = getattr(cls(), name)
        assert as_yaml(shown[f"{section}.{name}"]["default"], default) == default, f"{section}.{name}"
        assert shown[f"{section}.{name}"]["changed"] is None


def test_every_section_is_documented_too():
    docs = source_docs(Path(schema.__file__), "Config")
    assert sorted(docs) == sorted(f.name for f in dataclasses.fields(Config))
    assert all(docs.values())


@dataclass
class _Part:
    documented: int = 1
    """Has a docstring."""

    bare: int = 2


@dataclass
class _Whole:
    part: _Part = field(default_factory=_Part)
    """A section whose second field has no docstring."""


def test_a_field_without_a_docstring_is_reported_and_fails_the_check():
    assert missing_docs(_Part) == ["bare"]
    assert attribute_docs(_Part) == {"documented": "Has a docstring."}
    assert source_docs(Path(__file__), "_Part") == {"documented": "Has a docstring."}
    shown = shown_fields(render_text(sections(_Whole())))
    assert sorted(shown) == ["part.bare", "part.documented"]
    assert undocumented(shown, ["part.documented", "part.bare"]) == ["part.bare"]
    assert missing_docs(schema.Config) == []
    for _, _, cls in every_field():
        assert missing_docs(cls) == [], cls.__name__


def test_set_and_config_values_show_next_to_their_defaults(capsys):
    overrides = {"model.num_layers": 6, "precision.dtype": "bf16", "optim.lr": 1e-3,
                 "checkpoint.exit_signals": ["SIGINT"]}
    args = ["config", "show", "--config", str(TINY)]
    for key, value in overrides.items():
        args += ["--set", f"{key}={value}"]
    assert cli(args) == 0
    shown = shown_fields(capsys.readouterr().out)
    from_file = yaml.safe_load(TINY.read_text())
    changed = 0
    for section, name, cls in every_field():
        key, default = f"{section}.{name}", getattr(cls(), name)
        expected = overrides.get(key, from_file.get(section, {}).get(name, default))
        if isinstance(default, float):
            expected = float(expected)
        assert as_yaml(shown[key]["value"], expected) == expected, key
        assert as_yaml(shown[key]["default"], default) == default, key
        assert (shown[key]["changed"] is not None) == (expected != default), key
        changed += expected != default
    assert shown["model.num_layers"]["value"] == "6" and shown["model.num_layers"]["default"] == "4"
    assert shown["precision.dtype"]["value"] == "bf16" and shown["precision.dtype"]["default"] == "fp32"
    assert shown["model.vocab_size"]["value"] == "512" and shown["model.vocab_size"]["default"] == "null"
    assert changed >= len(overrides) + 5


def test_markdown_with_values_has_a_value_column(capsys):
    assert cli(["config", "show", "--markdown", "--set", "model.num_layers=6"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| field | type | default | value | meaning |"
    row = next(line for line in lines if line.startswith("| `num_layers` |"))
    assert row.split(" | ")[2:4] == ["`4`", "`6`"]


def literal_fields() -> list[tuple[str, tuple, bool]]:
    """(`section.field`, allowed values, whether null is allowed) of every Literal-annotated field."""
    result = []
    for section, name, cls in every_field():
        annotation = typing.get_type_hints(cls)[name]
        union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
        options = typing.get_args(annotation) if union else (annotation,)
        literals = [o for o in options if typing.get_origin(o) is Literal]
        if literals:
            result.append((f"{section}.{name}", typing.get_args(literals[0]), type(None) in options))
    return result


LITERALS = pytest.mark.parametrize("key, choices, nullable", literal_fields(), ids=[k for k, *_ in literal_fields()])


def test_fixed_choices_are_literals():
    keys = {key: choices for key, choices, _ in literal_fields()}
    for key in ("precision.dtype", "precision.fp8", "precision.fp8_amax_compute_algo", "model.transformer_impl",
                "model.recompute", "model.rope_scaling", "optim.lr_schedule"):
        assert key in keys, key
    assert keys["precision.dtype"] == DTYPES == ("fp32", "bf16", "fp16")
    assert keys["model.recompute"] == RECOMPUTE == ("none", "selective", "full")


@LITERALS
def test_a_bad_choice_in_yaml_exits_2_naming_the_field_and_the_choices(capsys, tmp_path, key, choices, nullable):
    section, name = key.split(".")
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"# a comment\n{section}:\n  {name}: not-a-choice\n")
    assert cli(["config", "show", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"bad.yaml:3: {key} must be one of {', '.join(choices)}{' or null' if nullable else ''}, got" in err
    assert err.endswith("got 'not-a-choice'")
    assert len(err.splitlines()) == 1
    # Control: the same file with an allowed value loads, so the value (not the key or file) was rejected.
    bad.write_text(f"# a comment\n{section}:\n  {name}: {choices[-1]}\n")
    assert getattr(getattr(load_config(bad), section), name) == choices[-1]


@LITERALS
def test_validation_reads_the_allowed_values_from_the_literal(key, choices, nullable):
    section, name = key.split(".")
    config = load_config(TINY)
    assert not [p for p in config_problems(config) if p.startswith(key)]
    setattr(getattr(config, section), name, "not-a-choice")
    problems = [p for p in config_problems(config) if p.startswith(key)]
    allowed = ", ".join(choices) + (" or null" if nullable else "")
    assert problems == [f"{key} must be one of {allowed}, got 'not-a-choice'"]


def test_readme_reference_is_current():
    readme = (ROOT / "README.md").read_text()
    assert readme.count(START_MARKER) == 1 and readme.count(END_MARKER) == 1
    generated = render_markdown(sections(Config()))
    assert readme_block(readme) == generated, "run `megatron-llm config show --update README.md`"
    # Control: one changed docstring makes the generated text differ from the README's.
    stale = sections(Config())
    first = stale[0].fields[0]
    stale[0].fields[0] = dataclasses.replace(first, doc=first.doc + " (edited)")
    assert render_markdown(stale) != readme_block(readme)


def test_update_rewrites_only_the_block(tmp_path, capsys):
    doc = tmp_path / "README.md"
    doc.write_text(f"# Title\n\nbefore\n{START_MARKER}\n| old | table |\n{END_MARKER}\nafter\n")
    assert cli(["config", "show", "--update", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# Title\n\nbefore\n" + START_MARKER + "\n| field | type | default | meaning |")
    assert text.endswith(f"{END_MARKER}\nafter\n")
    assert readme_block(text) == render_markdown(sections(Config()))
    doc.write_text("# no markers\n")
    assert cli(["config", "show", "--update", str(doc)]) == 2
    assert "no <!-- config-reference:start -->" in capsys.readouterr().err
    with pytest.raises(UsageError, match="drop --config and --set"):
        config_main(["show", "--update", str(doc), "--set", "model.num_layers=2"])
