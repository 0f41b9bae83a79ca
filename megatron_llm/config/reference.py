"""The configuration reference as text (for a terminal) or as a Markdown table (the README's block)."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import yaml

from megatron_llm.config.fields import FieldInfo, SectionInfo
from megatron_llm.errors import UsageError

START_MARKER = "<!-- config-reference:start -->"
END_MARKER = "<!-- config-reference:end -->"
_BLOCK = re.compile(re.escape(START_MARKER) + r"\n(.*?)" + re.escape(END_MARKER), re.DOTALL)


def format_value(value: Any) -> str:
    """A value as it would be written in a YAML config (strings quoted only where YAML would misread them)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        try:
            plain = yaml.safe_load(value) == value
        except yaml.YAMLError:
            plain = False
        return value if plain and value.strip() == value else json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(item) for item in value) + "]"
    if dataclasses.is_dataclass(value):
        return "{" + ", ".join(f"{k}: {format_value(v)}" for k, v in dataclasses.asdict(value).items()) + "}"
    return str(value)


def _field_line(info: FieldInfo) -> str:
    changed = "; changed" if info.value != info.default else ""
    return f"  {info.key}: {info.type} = {format_value(info.value)}  (default: {format_value(info.default)}{changed})"


def render_text(sections: list[SectionInfo]) -> str:
    """Every field: `section.field: type = value  (default: d)`, then its documentation, indented."""
    lines: list[str] = []
    for section in sections:
        lines += [f"{section.name}: {section.doc}" if section.doc else f"{section.name}:"]
        for info in section.fields:
            lines += [_field_line(info), f"      {info.doc or '(undocumented)'}"]
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(sections: list[SectionInfo], with_values: bool = False) -> str:
    """One table, a bold row per section; `with_values` adds the configured value next to the default."""
    header = ["field", "type", "default"] + (["value"] if with_values else []) + ["meaning"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for section in sections:
        lines.append("| " + " | ".join([f"**{section.name}**"] + [""] * (len(header) - 2) + [_cell(section.doc)])
                     + " |")
        for info in section.fields:
            cells = [f"`{info.name}`", _cell(info.type), f"`{_cell(format_value(info.default))}`"]
            if with_values:
                cells.append(f"`{_cell(format_value(info.value))}`")
            cells.append(_cell(info.doc))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def readme_block(text: str, where: str = "README") -> str:
    """The generated text between the reference markers of a document."""
    match = _BLOCK.search(text)
    if match is None:
        raise UsageError(f"{where}: no {START_MARKER} ... {END_MARKER} block")
    return match.group(1)


def replace_readme_block(text: str, block: str, where: str = "README") -> str:
    """`text` with the block between the reference markers replaced by `block`."""
    readme_block(text, where)
    return _BLOCK.sub(lambda _: f"{START_MARKER}\n{block}{END_MARKER}", text, count=1)
