"""A non-editable install (a wheel in a fresh venv) finds its packaged sbatch templates.

The repository's own venv has megatron_llm installed in editable mode, where the templates are simply files
next to the source. Here the package is built into a wheel from a copy of the sources, installed with pip
into a new venv, and run from an unrelated directory: `slurm template` and `slurm submit --dry-run` must
read the templates from the installed package. The negative control builds the same sources without
setup.py's package_data and shows the wheel then lacks the templates and the installed command fails.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.slurm.slurm_jobs import REPO, TINY

TEMPLATES = sorted(path.name for path in (REPO / "megatron_llm" / "launch" / "templates").glob("*.sbatch"))
PACKAGE_DATA = '"megatron_llm.launch": ["templates/*.sbatch"],'


def build_wheel(sources: Path, out: Path, package_data: bool = True) -> Path:
    """`pip wheel` over a copy of setup.py, megatron_llm/ and kernels/ (so the repository gets no build/)."""
    sources.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "megatron_llm", sources / "megatron_llm", ignore=ignore)
    shutil.copytree(REPO / "kernels", sources / "kernels", ignore=ignore)
    setup_py = (REPO / "setup.py").read_text()
    assert PACKAGE_DATA in setup_py
    (sources / "setup.py").write_text(setup_py if package_data else setup_py.replace(PACKAGE_DATA, ""))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                             "--no-index", "-q", "-w", str(out), str(sources)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    wheels = list(out.glob("megatron_llm-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def install(wheel: Path, venv: Path) -> Path:
    """A new venv holding only the wheel; the repository venv's site-packages (torch, megatron-core, ...) is
    appended to its path by a .pth line, which does not run that directory's own .pth files, so the editable
    install of megatron_llm there stays invisible. Returns the venv's `megatron-llm` script."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    result = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                             "--no-index", "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "repository_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin" / "megatron-llm"


def run(script: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(script), *args], capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(wheel, the installed megatron-llm script, an empty working directory outside the repository)."""
    root = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(root / "src", root / "dist")
    script = install(wheel, root / "venv")
    (root / "elsewhere").mkdir()
    return wheel, script, root / "elsewhere"


def test_the_wheel_holds_every_template_byte_for_byte(installed):
    wheel, _, _ = installed
    with zipfile.ZipFile(wheel) as archive:
        for name in TEMPLATES:
            packaged = archive.read(f"megatron_llm/launch/templates/{name}")
            assert packaged == (REPO / "megatron_llm" / "launch" / "templates" / name).read_bytes()


def test_the_installed_command_runs_from_the_wheel_not_the_repository(installed):
    _, script, elsewhere = installed
    python = script.parent / "python"
    found = subprocess.run([str(python), "-c", "import megatron_llm.launch as m; print(m.__file__)"],
                           capture_output=True, text=True, cwd=elsewhere, check=True).stdout.strip()
    assert Path(found).is_relative_to(script.parent.parent), found
    assert not Path(found).is_relative_to(REPO), found


def test_installed_slurm_template_lists_prints_and_writes_the_packaged_templates(installed):
    _, script, elsewhere = installed
    listed = run(script, "slurm", "template", cwd=elsewhere)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == TEMPLATES
    shown = run(script, "slurm", "template", "pretrain.sbatch", cwd=elsewhere)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == (REPO / "megatron_llm" / "launch" / "templates" / "pretrain.sbatch").read_text()
    written = run(script, "slurm", "template", "preprocess_array.sbatch", "-o", "preprocess_array.sbatch",
                  cwd=elsewhere)
    assert written.returncode == 0 and written.stdout == "", written.stderr
    copy = elsewhere / "preprocess_array.sbatch"
    assert copy.read_text() == (REPO / "megatron_llm" / "launch" / "templates" / copy.name).read_text()
    assert copy.stat().st_mode & 0o111
    missing = run(script, "slurm", "template", "nope.sbatch", cwd=elsewhere)
    assert missing.returncode == 2 and "pretrain.sbatch" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_installed_slurm_submit_dry_run_renders_the_packaged_pretrain_script(installed):
    _, script, elsewhere = installed
    result = run(script, "slurm", "submit", "--dry-run", "--config", str(TINY), "--run-dir", "runs/x",
                 "--nodes", "2", "--procs-per-node", "2", "--set", "parallel.tensor=2", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    template = (REPO / "megatron_llm" / "launch" / "templates" / "pretrain.sbatch").read_text()
    body = template[template.index("set -uo pipefail"):]
    assert result.stdout.endswith(body)
    assert "#SBATCH --nodes=2\n" in result.stdout and f"RUN_DIR={elsewhere / 'runs' / 'x'}\n" in result.stdout


def test_without_package_data_the_wheel_lacks_the_templates(tmp_path):
    """Negative control: the same sources without package_data give a wheel whose command cannot find them."""
    wheel = build_wheel(tmp_path / "src", tmp_path / "dist", package_data=False)
    with zipfile.ZipFile(wheel) as archive:
        assert not [name for name in archive.namelist() if name.endswith(".sbatch")]
    script = install(wheel, tmp_path / "venv")
    (tmp_path / "elsewhere").mkdir()
    result = run(script, "slurm", "template", "pretrain.sbatch", cwd=tmp_path / "elsewhere")
    assert result.returncode == 2, result.stderr
    assert "has no sbatch templates" in result.stderr and len(result.stderr.strip().splitlines()) == 1
