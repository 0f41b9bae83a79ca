"""`make mutants`: plant each known bug in a copy of the project, run the tests that should catch it, and print
caught/missed per mutant. Exits 1 if any mutant survives (or no longer applies), else 0.

Each mutant gets a fresh copy of the package, tests and examples in a temporary directory; its tests run there
with PYTHONPATH pointing at the copy (so every process the tests start imports the mutated package, not the
installed one). A mutant is caught when its tests fail. `python tests/mutants/run.py NAME_SUBSTRING...` runs a
subset.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.mutants.mutants import MUTANTS, Mutant  # noqa: E402

COPIED = ("megatron_llm", "tests", "examples", "pytest.ini")


def make_copy(destination: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=ignore)
        else:
            shutil.copy2(source, destination / name)
    shutil.copytree(REPO / "kernels", destination / "megatron_llm" / "kernels", ignore=ignore)


def apply(mutant: Mutant, root: Path) -> bool:
    path = root / mutant.path
    text = path.read_text()
    if text.count(mutant.original) != 1:
        return False
    path.write_text(text.replace(mutant.original, mutant.mutated))
    return True


def run_mutant(mutant: Mutant) -> tuple[str, float]:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mutant-") as tmp:
        root = Path(tmp)
        make_copy(root)
        if not apply(mutant, root):
            return "stale", time.perf_counter() - start
        env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
        command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutant.tests]
        result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    if result.returncode == 0:
        return "MISSED", time.perf_counter() - start
    if result.returncode in (1,):  # tests failed: the bug was seen
        return "caught", time.perf_counter() - start
    return f"error ({result.returncode})", time.perf_counter() - start


def main(argv: list[str]) -> int:
    chosen = [m for m in MUTANTS if not argv or any(a in m.name for a in argv)]
    rows = []
    for mutant in chosen:
        status, seconds = run_mutant(mutant)
        rows.append((mutant, status, seconds))
        print(f"{status:>8}  {seconds:6.0f} s  {mutant.name}", flush=True)
    width = max(len(m.name) for m, _, _ in rows)
    print(f"\n{'mutant':<{width}}  result   tests")
    for mutant, status, _ in rows:
        print(f"{mutant.name:<{width}}  {status:<7}  {', '.join(t.rsplit('/', 1)[-1] for t in mutant.tests)}")
    caught = sum(status == "caught" for _, status, _ in rows)
    print(f"\n{caught} of {len(rows)} mutants caught")
    return 0 if caught == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
