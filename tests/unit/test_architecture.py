"""The package's shape, checked from its source: data flows forward, commands sit at the top, and the
training loop stays readable. Imports are read with `ast`, so lazy imports inside functions count too."""

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "megatron_llm"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("megatron_llm")}


MODULES = {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def is_command(module: str) -> bool:
    return module.rsplit(".", 1)[-1].endswith("command")


def violations(rule, modules: dict[str, set[str]] = MODULES) -> list[str]:
    return sorted(f"{m} imports {i}" for m, imported in modules.items() for i in imported if rule(m, i))


def imports_a_command(module: str, imported: str) -> bool:
    """Only the dispatcher and other commands may import a command module."""
    return imported in MODULES and is_command(imported) and not is_command(module) and module != "megatron_llm.cli"


def backwards(module: str, imported: str) -> bool:
    """data never imports training; model never imports data (nor training)."""
    return ((module.startswith("megatron_llm.data") and imported.startswith("megatron_llm.training"))
            or (module.startswith("megatron_llm.model") and imported.startswith(("megatron_llm.data",
                                                                                  "megatron_llm.training"))))


@pytest.mark.parametrize("rule", [imports_a_command, backwards])
def test_imports_flow_forward(rule):
    assert violations(rule) == []
    # Negative control: the rule sees a planted violation.
    planted = {"megatron_llm.data.x": {"megatron_llm.training.loop"}, "megatron_llm.model.y": {"megatron_llm.data.z"},
               "megatron_llm.training.loop": {"megatron_llm.training.command"}}
    assert violations(rule, {**MODULES, **planted}) != []


def test_every_command_is_a_command_module_with_the_same_shape():
    from megatron_llm.cli import COMMANDS

    for name, (module, _) in COMMANDS.items():
        assert is_command(module), f"{name}: {module} is not a *command module"
        source = ast.parse((PACKAGE.parent / (module.replace(".", "/") + ".py")).read_text())
        functions = {node.name for node in source.body if isinstance(node, ast.FunctionDef)}
        assert {"build_parser", "main"} <= functions, f"{module} lacks build_parser() or main(argv)"


def test_module_names_shadow_no_standard_library_module_and_are_unique():
    stems = [p.stem for p in PACKAGE.rglob("*.py") if p.stem not in ("__init__", "command", "__main__")]
    assert sorted(s for s in stems if s in sys.stdlib_module_names) == []
    assert sorted({s for s in stems if stems.count(s) > 1}) == []


def test_the_training_loop_reads_in_one_sitting():
    assert len((PACKAGE / "training" / "loop.py").read_text().splitlines()) <= 250
