"""`megatron-llm plan` end to end: the 7B planning question, JSON, --explain and usage errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_llm.cli import main as cli_main
from megatron_llm.planning.command import make_plan
from megatron_llm.planning.report import render
from megatron_llm.planning.units import batch_sequences, parse_count

ROOT = Path(__file__).resolve().parents[2]
LLAMA_7B = str(ROOT / "examples" / "configs" / "llama-7b.yaml")
QUESTION = ["--config", LLAMA_7B, "--tokens", "1T", "--gpus", "64", "--gpu", "h100", "--seq-length", "4096",
            "--global-batch-tokens", "4M", "--top", "5"]


@pytest.fixture(scope="module")
def plan_7b() -> dict:
    plan, _ = make_plan(QUESTION + ["--mfu", "0.45", "--price-per-gpu-hour", "2.50", "--explain"])
    return plan


@pytest.mark.parametrize("mfu, price", [(0.40, 4.0), (0.50, 2.0), (0.45, 3.0)])
def test_7b_on_a_trillion_tokens_costs_tens_to_hundreds_of_thousands(mfu: float, price: float) -> None:
    plan, _ = make_plan(QUESTION + ["--mfu", str(mfu), "--price-per-gpu-hour", str(price)])
    best = plan["layouts"]["best"][0]
    assert 10_000 < best["cost"]["dollars"] < 300_000
    flops = plan["flops"]["per_token"]["total"] * best["cost"]["tokens"]
    seconds = flops / (64 * 989.4e12 * best["timing"]["mfu"])
    assert best["cost"]["dollars"] == pytest.approx(seconds / 3600 * 64 * price, rel=1e-9)


def test_report_shows_the_arithmetic(plan_7b: dict) -> None:
    text = render(plan_7b)
    assert "6,738,415,616" in text
    assert "6N" in text and "attention" in text and "causal" in text
    assert "1024 x 4096" in text  # 4M tokens = 4 x 2^20 = 1024 sequences of 4096
    assert "GPU-hours x $2.50" in text and "days" in text
    assert "fits with" in text  # --explain
    assert "Where each listed layout's step time goes" in text  # --explain: the predicted breakdown
    for part in ("weights", "gradients", "optimizer", "activations", "buffers"):
        assert part in text


def test_plan_lists_feasible_and_rejected_layouts(plan_7b: dict) -> None:
    layouts = plan_7b["layouts"]
    assert layouts["feasible"] > 0 and layouts["rejected"] > 0
    assert layouts["feasible"] + layouts["rejected"] == layouts["evaluated"]
    usable = plan_7b["inputs"]["gpu"]["usable_bytes"]
    assert all(entry["memory"]["total"] <= usable for entry in layouts["best"])
    seconds = [entry["timing"]["step_seconds"] for entry in layouts["best"]]
    assert seconds == sorted(seconds)
    for entry in layouts["rejected_shown"]:
        assert entry["problem"]
        fix = entry["fix"]
        if fix is not None:
            assert fix["fits"] and fix["memory"]["total"] <= usable
    assert plan_7b["configured_layout"]["layout"]["tensor"] == 2
    assert plan_7b["configured_layout"]["fits"]


def test_json_is_one_document_with_the_same_numbers(capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["plan"] + QUESTION + ["--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["parameters"]["total"] == 6_738_415_616
    assert document["inputs"]["global_batch_size"] == 1024
    assert document["layouts"]["best"][0]["cost"]["steps"] == 238_419


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--gpu", "rtx4090"], "unknown GPU"),
        (["--precision", "int8"], "--precision"),
        (["--gpu", "a100", "--precision", "fp8"], "fp8"),
        (["--tokens", "12Q"], "--tokens"),
        (["--mfu", "1.5"], "--mfu"),
        (["--network-gbps", "0"], "--network-gbps"),
        (["--gpus-per-node", "0"], "--gpus-per-node"),
        (["--set", "model.vocab_size=null"], "model.vocab_size"),
    ],
)
def test_usage_errors_exit_2_with_one_line(extra: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["plan"] + QUESTION + extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_small_model_layouts_no_longer_tie() -> None:
    """The old planner gave all 936 layouts of llama-125m on 8 GPUs the same MFU and step time; the model ranks
    data parallelism first and predicts TP4 (12 heads: TP8 cannot split them) clearly slower."""
    config = str(ROOT / "examples" / "configs" / "llama-125m.yaml")
    plan, _ = make_plan(["--config", config, "--gpus", "8", "--gpu", "h100", "--tokens", "10B", "--top", "2000"])
    best = plan["layouts"]["best"]
    seconds = [entry["timing"]["step_seconds"] for entry in best]
    assert len(set(round(s, 6) for s in seconds)) > len(seconds) // 4
    top = best[0]["layout"]
    assert (top["tensor"], top["pipeline"], top["context"]) == (1, 1, 1)
    tp4 = min(e["timing"]["step_seconds"] for e in best if e["layout"]["tensor"] == 4)
    assert tp4 > 1.2 * seconds[0]
    for entry in best[:20]:
        timing = entry["timing"]
        assert sum(timing["breakdown"].values()) == pytest.approx(timing["step_seconds"], rel=1e-12)
        assert timing["mfu"] == pytest.approx(
            timing["model_flops_per_step"] / (timing["step_seconds"] * 8 * 989.4e12), rel=1e-12)


def test_layout_that_cannot_run_is_reported() -> None:
    plan, _ = make_plan(QUESTION + ["--set", "parallel.tensor=3"])
    assert "not divisible" in plan["configured_layout"]["problem"]


def test_counts() -> None:
    assert parse_count("1T", "--tokens") == 10**12
    assert parse_count("2.5B", "--tokens") == 2_500_000_000
    assert parse_count("4Mi", "--x") == 4 * 2**20
    assert batch_sequences("4M", 4096) == 1024
    assert batch_sequences("2M", 1000) == 2000


def test_plan_does_not_import_torch() -> None:
    code = (
        "import sys; from megatron_llm.planning.command import make_plan; "
        f"make_plan(['--config', {LLAMA_7B!r}, '--gpus', '8', '--top', '1']); "
        "assert 'torch' not in sys.modules, 'plan imported torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
