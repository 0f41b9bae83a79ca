"""`megatron-llm doctor`: versions against the packages' own `__version__`, the platform against torch, and
what a config will use on a CPU machine and on a simulated H100 (no Transformer Engine import needed)."""

from __future__ import annotations

import json

import megatron.core
import torch

from megatron_llm.cli import main as cli_main
from megatron_llm.config.loader import load_config
from megatron_llm.runtime.doctor_command import config_plan
from megatron_llm.runtime.hardware import Platform, simulated_h100

LLAMA_8B = "examples/configs/llama-8b.yaml"
CPU = Platform(False, None, None, False)


def test_json_report_matches_the_installed_packages_and_torch(capsys) -> None:
    assert cli_main(["doctor", "--json", "--config", "examples/configs/tiny.yaml"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["installed"]["torch"] == torch.__version__
    assert report["installed"]["megatron-core"] == megatron.core.__version__
    assert report["platform"]["cuda"] == torch.cuda.is_available()
    assert report["platform"]["torch_cuda_build"] == torch.version.cuda
    assert ("gloo" in report["platform"]["backends"]) == torch.distributed.is_gloo_available()
    assert report["config"]["problems"] == []


def test_config_plan_on_cpu_and_on_a_simulated_h100(monkeypatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the kernel tests set it (Triton on CPU tensors)
    fp8 = load_config(LLAMA_8B, ["precision.fp8=current", "model.fused_linear_cross_entropy=true"])
    on_cpu = config_plan(fp8, CPU)
    assert on_cpu["layers"].startswith("local") and on_cpu["fused_linear_cross_entropy"] == "torch (chunked)"
    assert any("precision.fp8" in problem for problem in on_cpu["problems"]) and on_cpu["environment"] == {}
    on_h100 = config_plan(fp8, simulated_h100())
    assert on_h100["problems"] == [] and on_h100["layers"] == "transformer_engine"
    assert on_h100["apply_rope_fusion"] and on_h100["gradient_accumulation_fusion"]
    assert on_h100["environment"]["CUDA_DEVICE_MAX_CONNECTIONS"] == "32"  # llama-8b.yaml is TP=1, CP=1
