"""The GPU settings the engine selects for Llama-3-8B on an H100 node, field by field against the fastest
published recipe (Megatron-Bridge perf recipes, `llama3_8b_pretrain_8gpu_h100_fp8cs_config` and its BF16
sibling, with `_benchmark_common`): TransformerConfig, DDP config, optimizer config, manual GC, and the
launch environment (as the launcher and the sbatch template set it).

The machine is simulated (a Platform saying CUDA sm_90 with Transformer Engine and apex; nothing imports
either), so this runs on CPU. examples/configs/llama-8b.yaml is the recipe's layout itself (FP8 case); the
BF16 case changes it by overrides. Negative control: the same config on this CPU machine selects none of the
GPU fusions or overlaps, so every compared fusion/overlap field would fail there.

Intentional differences (not compared, kept here with the reason):
- persist_layer_norm: the recipe sets it; it only affects apex's FusedLayerNorm, which the TE layer spec
  does not use (TE's own norms), so the engine leaves it off.
- first/last layers in BF16: the recipe runs every layer in FP8 (`first_last_layers_bf16=False`), as does
  the engine (it has no such option).
- check_for_nan_in_grad: the recipe has megatron-core raise on a NaN gradient; the engine keeps it off and
  skips the step instead (training/step.py: a non-finite grad norm skips the update; the bad-step guard
  aborts after schedule.max_skipped_in_a_row).
- average_in_collective: the recipe averages in the reduce collective; the engine's loss is per token
  (calculate_per_token_loss), which megatron-core's DDP requires to be summed, then divided by the global
  token count.
- bucket_size: the recipe sets 128 MiB buckets when DP > 1; the engine leaves megatron-core's default
  (max(40M, 1M x DP) elements), one less hand-tuned number.
- overlap_param_gather_with_optimizer_step: off in the 8B recipe (PP=1; Megatron-Bridge turns it on only
  with DP > 1 and an interleaved pipeline, i.e. the 70B one); the engine never turns it on, because
  Megatron-LM refuses it with distributed checkpoints, the only kind the engine writes.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from megatron.core.distributed import DistributedDataParallelConfig
from megatron.core.optimizer import OptimizerConfig
from megatron.core.transformer import TransformerConfig

from megatron_llm.config.loader import load_config
from megatron_llm.config.validation import validate
from megatron_llm.errors import UsageError
from megatron_llm.model.builder import transformer_settings, uses_te_rng_tracker
from megatron_llm.runtime.gpu_env import apply_recipe_environment, recipe_environment
from megatron_llm.runtime.hardware import Platform, simulated_h100
from megatron_llm.training.optimizer import ddp_settings, optimizer_settings

LLAMA_8B = "examples/configs/llama-8b.yaml"
FP8_LAYOUT: list[str] = []  # the example config is the FP8 recipe's layout as it stands
BF16_LAYOUT = ["precision.fp8=null", "precision.fp8_param_gather=false", "parallel.context=2", "model.recompute=none"]

# The recipe's values (Megatron-Bridge perf_recipes/llama/h100/llama3.py + _common.py), as megatron-core fields.
RECIPE_FP8 = {
    "tensor_model_parallel_size": 1,
    "pipeline_model_parallel_size": 1,
    "context_parallel_size": 1,
    "virtual_pipeline_model_parallel_size": None,
    "sequence_parallel": False,
    "bf16": True,
    "fp8": "hybrid",
    "fp8_recipe": "tensorwise",
    "fp8_param": True,  # bf16_with_fp8_current_scaling_mixed: fp8_param_gather=True, fp8_param follows it
    "recompute_granularity": "full",
    "recompute_method": "block",
    "recompute_num_layers": 5,
    "apply_rope_fusion": True,
    "cross_entropy_loss_fusion": True,
    "cross_entropy_fusion_impl": "te",
    "gradient_accumulation_fusion": True,
    "masked_softmax_fusion": True,
    "bias_activation_fusion": True,
    "bias_dropout_fusion": True,
    "use_te_rng_tracker": True,
    "num_layers": 32,
    "hidden_size": 4096,
    "ffn_hidden_size": 14336,
    "num_attention_heads": 32,
    "num_query_groups": 8,
    "kv_channels": 128,
    "add_bias_linear": False,
    "attention_dropout": 0.0,
    "hidden_dropout": 0.0,
    "normalization": "RMSNorm",
}
RECIPE_FP8_ENV = {
    "CUDA_DEVICE_MAX_CONNECTIONS": "32",
    "TORCH_NCCL_HIGH_PRIORITY": "1",
    "TORCH_NCCL_AVOID_RECORD_STREAMS": "1",
    "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
    "NVTE_FWD_LAYERNORM_SM_MARGIN": "20",
    "NVTE_BWD_LAYERNORM_SM_MARGIN": "20",
}
RECIPE_BF16 = {"context_parallel_size": 2, "fp8": None, "fp8_param": False, "bf16": True, "apply_rope_fusion": True,
               "cross_entropy_loss_fusion": True, "cross_entropy_fusion_impl": "te"}
FUSIONS = ("apply_rope_fusion", "cross_entropy_loss_fusion", "gradient_accumulation_fusion",
           "masked_softmax_fusion", "bias_activation_fusion", "bias_dropout_fusion", "use_te_rng_tracker")
RECIPE_FP8_DDP = {
    "grad_reduce_in_fp32": False,
    "overlap_grad_reduce": True,
    "overlap_param_gather": True,
    "use_distributed_optimizer": True,
    "fp8_param_gather": True,
}
RECIPE_FP8_OPTIMIZER = {
    "optimizer": "adam",
    "bf16": True,
    "use_distributed_optimizer": True,
    "overlap_param_gather": True,
    "overlap_param_gather_with_optimizer_step": False,
}
RECIPE_MANUAL_GC_INTERVAL = 100
CPU = Platform(False, None, None, False)


MCORE_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TransformerConfig)
                  if f.default is not dataclasses.MISSING}


DDP_DEFAULTS = {f.name: f.default for f in dataclasses.fields(DistributedDataParallelConfig)
                if f.default is not dataclasses.MISSING}
OPTIMIZER_DEFAULTS = {f.name: f.default for f in dataclasses.fields(OptimizerConfig)
                      if f.default is not dataclasses.MISSING}


def _differences(settings: dict, recipe: dict, defaults: dict = MCORE_DEFAULTS) -> dict:
    """Recipe fields whose value differs; a field the engine leaves unset has megatron-core's default."""
    resolved = {**defaults, **settings}
    return {key: (resolved.get(key, "<missing>"), want) for key, want in recipe.items()
            if resolved.get(key, "<missing>") != want}


def test_transformer_config_equals_the_fp8_recipe_on_a_simulated_h100() -> None:
    settings = transformer_settings(load_config(LLAMA_8B, FP8_LAYOUT), simulated_h100())
    assert _differences(settings, RECIPE_FP8) == {}


def test_ddp_and_optimizer_configs_equal_the_fp8_recipe_on_a_simulated_h100() -> None:
    config = load_config(LLAMA_8B, FP8_LAYOUT)
    ddp = ddp_settings(config, simulated_h100())
    optimizer = optimizer_settings(config, simulated_h100())
    assert _differences(ddp, RECIPE_FP8_DDP, DDP_DEFAULTS) == {}
    assert _differences(optimizer, RECIPE_FP8_OPTIMIZER, OPTIMIZER_DEFAULTS) == {}
    DistributedDataParallelConfig(**ddp)  # every key is a real megatron-core field (a typo raises here)
    OptimizerConfig(**optimizer)
    assert config.schedule.manual_gc_interval == RECIPE_MANUAL_GC_INTERVAL
    assert uses_te_rng_tracker(config, simulated_h100())  # training/setup.py seeds TE's tracker with it


def test_ddp_and_optimizer_stay_as_on_cpu_without_cuda_and_te() -> None:
    """Negative control: on CPU (or a GPU without TE) gradients reduce in FP32 and nothing overlaps the
    parameter all-gather, so the compared fields differ from the recipe."""
    config = load_config(LLAMA_8B, FP8_LAYOUT)
    for platform in (CPU, simulated_h100(transformer_engine=False, apex=False)):
        ddp = ddp_settings(config, platform)
        assert set(_differences(ddp, RECIPE_FP8_DDP, DDP_DEFAULTS)) == {"grad_reduce_in_fp32", "overlap_param_gather"}
        assert not optimizer_settings(config, platform)["overlap_param_gather"]
        assert not uses_te_rng_tracker(config, platform)
    explicit = load_config(LLAMA_8B, ["precision.grad_reduce_in_fp32=true", "parallel.overlap_param_gather=false"])
    ddp = ddp_settings(explicit, simulated_h100())  # the user's explicit choice wins on a GPU too
    assert ddp["grad_reduce_in_fp32"] and not ddp["overlap_param_gather"]
    fp32 = ddp_settings(load_config(LLAMA_8B, ["precision.dtype=fp32", "precision.fp8=null"]), CPU)
    assert not fp32["grad_reduce_in_fp32"]  # fp32 gradients are already fp32


def test_fp8_primary_weights_follow_precision_fp8_param_gather() -> None:
    """Negative control for fp8_param / fp8_param_gather: with precision.fp8_param_gather off, exactly these two
    fields differ from the recipe."""
    config = load_config(LLAMA_8B, FP8_LAYOUT + ["precision.fp8_param_gather=false"])
    assert _differences(transformer_settings(config, simulated_h100()), RECIPE_FP8) == {"fp8_param": (False, True)}
    assert _differences(ddp_settings(config, simulated_h100()), RECIPE_FP8_DDP, DDP_DEFAULTS) == \
        {"fp8_param_gather": (False, True)}


@pytest.mark.parametrize("overrides, message", [
    (["precision.fp8=null"], "precision.fp8_param_gather needs precision.fp8 (delayed or current)"),
    (["parallel.distributed_optimizer=false"], "precision.fp8_param_gather needs parallel.distributed_optimizer=true"),
    (["model.transformer_impl=local"], "precision.fp8_param_gather needs Transformer Engine's layers"),
])
def test_fp8_primary_weights_are_refused_where_megatron_refuses_them(overrides: list[str], message: str) -> None:
    """megatron-core's TransformerConfig raises on fp8_param without fp8, Megatron-LM refuses --fp8-param-gather
    without the distributed optimizer, and only TE's layers hold FP8 weights. The recipe config itself is valid
    on the simulated H100 (the negative control) and refused on CPU."""
    validate(load_config(LLAMA_8B, FP8_LAYOUT), 8, simulated_h100())
    with pytest.raises(UsageError, match=re.escape(message)):
        validate(load_config(LLAMA_8B, FP8_LAYOUT + overrides), 8, simulated_h100())
    with pytest.raises(UsageError, match="precision.fp8_param_gather needs Transformer Engine and a CUDA GPU"):
        validate(load_config(LLAMA_8B, FP8_LAYOUT), 8, CPU)


def test_transformer_config_equals_the_bf16_recipe_on_a_simulated_h100() -> None:
    settings = transformer_settings(load_config(LLAMA_8B, BF16_LAYOUT), simulated_h100())
    assert _differences(settings, RECIPE_BF16) == {}


def test_launch_environment_equals_the_recipe() -> None:
    assert recipe_environment(load_config(LLAMA_8B, FP8_LAYOUT), simulated_h100()) == RECIPE_FP8_ENV
    bf16 = recipe_environment(load_config(LLAMA_8B, BF16_LAYOUT), simulated_h100())
    assert bf16 == {**RECIPE_FP8_ENV, "CUDA_DEVICE_MAX_CONNECTIONS": "1"}
    user = {"CUDA_DEVICE_MAX_CONNECTIONS": "8"}  # the user's own value is kept
    added = apply_recipe_environment(load_config(LLAMA_8B, FP8_LAYOUT), simulated_h100(), user)
    assert user["CUDA_DEVICE_MAX_CONNECTIONS"] == "8" and "CUDA_DEVICE_MAX_CONNECTIONS" not in added
    assert len(added) == len(RECIPE_FP8_ENV) - 1


@pytest.mark.parametrize("platform", [CPU, simulated_h100(transformer_engine=False, apex=False)],
                         ids=["cpu", "h100-without-te"])
def test_fusions_stay_off_without_cuda_and_te(platform: Platform) -> None:
    """Negative control: off the simulated H100 + TE, the compared fusion fields all differ from the recipe."""
    settings = transformer_settings(load_config(LLAMA_8B, BF16_LAYOUT), platform)
    gated_on_te = ("apply_rope_fusion", "cross_entropy_loss_fusion", "gradient_accumulation_fusion",
                   "use_te_rng_tracker")
    assert not any(settings[key] for key in gated_on_te)
    assert set(_differences(settings, RECIPE_FP8)) >= set(gated_on_te)
    if not platform.has_cuda:
        assert not any(settings[key] for key in FUSIONS)
        assert recipe_environment(load_config(LLAMA_8B, FP8_LAYOUT), platform) == {}


def test_gradient_accumulation_fusion_needs_apex_for_the_output_layer() -> None:
    settings = transformer_settings(load_config(LLAMA_8B, FP8_LAYOUT), simulated_h100(apex=False))
    assert settings["gradient_accumulation_fusion"] is False
    assert settings["cross_entropy_loss_fusion"] is True


def test_our_fused_linear_cross_entropy_replaces_te_cross_entropy_fusion() -> None:
    overrides = FP8_LAYOUT + ["model.fused_linear_cross_entropy=true"]
    settings = transformer_settings(load_config(LLAMA_8B, overrides), simulated_h100())
    assert settings["cross_entropy_loss_fusion"] is False


def test_local_launcher_exports_the_recipe_environment_where_unset(monkeypatch, capsys) -> None:
    """`launch --dry-run` on a simulated H100 shows the variables torchrun's workers would inherit; the user's
    own value stays. Negative control: on CPU nothing is added."""
    from megatron_llm.launch import local_command
    from megatron_llm.runtime import hardware

    environ = {k: v for k, v in os.environ.items() if k not in RECIPE_FP8_ENV}
    environ["TORCH_NCCL_HIGH_PRIORITY"] = "0"
    monkeypatch.setattr(os, "environ", environ)
    argv = ["--nproc-per-node", "8", "--dry-run", "--", "train", "--config", LLAMA_8B, "--run-dir", "run"]
    for simulated, expected in ((CPU, {}),
                                (simulated_h100(), {k: v for k, v in RECIPE_FP8_ENV.items()
                                                    if k != "TORCH_NCCL_HIGH_PRIORITY"})):
        monkeypatch.setattr(hardware, "detect_platform", lambda simulated=simulated: simulated)
        assert local_command.main(argv) == 0
        words = shlex.split(capsys.readouterr().out)
        prefix = dict(w.split("=", 1) for w in words[:words.index(sys.executable)])
        assert prefix == expected
        assert {k: environ[k] for k in expected} == expected
    assert environ["TORCH_NCCL_HIGH_PRIORITY"] == "0"


def test_sbatch_template_evaluates_the_recipe_environment(monkeypatch, capsys) -> None:
    """What the pretrain.sbatch template evals (`doctor --env`, train options ignored), run by bash itself."""
    from megatron_llm.runtime import doctor_command

    template = (Path(doctor_command.__file__).parents[1] / "launch/templates/pretrain.sbatch").read_text()
    assert 'eval "$($MEGATRON_LLM doctor --env --config "$CONFIG" "${TRAIN_ARGS[@]}")"' in template
    monkeypatch.setattr(doctor_command, "detect_platform", simulated_h100)
    monkeypatch.setenv("CUDA_DEVICE_MAX_CONNECTIONS", "4")
    assert doctor_command.main(["--env", "--config", LLAMA_8B, "--set", "schedule.train_iters=10",
                                "--resume-from", "somewhere"]) == 0
    exports = capsys.readouterr().out
    names = " ".join(RECIPE_FP8_ENV)
    shown = subprocess.run(["bash", "-c", f'eval "$EXPORTS"; for n in {names}; do echo "$n=${{!n}}"; done'],
                           env={"PATH": os.environ["PATH"], "EXPORTS": exports, "CUDA_DEVICE_MAX_CONNECTIONS": "4"},
                           capture_output=True, text=True, check=True).stdout.split()
    assert dict(line.split("=", 1) for line in shown) == {**RECIPE_FP8_ENV, "CUDA_DEVICE_MAX_CONNECTIONS": "4"}
    monkeypatch.setattr(doctor_command, "detect_platform", lambda: CPU)
    assert doctor_command.main(["--env", "--config", LLAMA_8B]) == 0
    assert capsys.readouterr().out == ""
