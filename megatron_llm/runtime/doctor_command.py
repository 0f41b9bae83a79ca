"""`megatron-llm doctor`: what is installed, what this machine supports, and what a config will use.

Reads package versions from their metadata and asks torch about CUDA; it imports Transformer Engine only on
a machine with CUDA (to report the import error people hit: a build against another torch or CUDA).
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import metadata

from megatron_llm.runtime.hardware import Platform, detect_platform

PACKAGES = {  # shown name: distribution names to try
    "megatron-llm": ["megatron-llm"],
    "torch": ["torch"],
    "megatron-core": ["megatron-core", "megatron_core"],
    "transformer-engine": ["transformer-engine", "transformer_engine", "transformer-engine-cu12",
                           "transformer-engine-cu13"],
    "transformer-engine-torch": ["transformer-engine-torch", "transformer_engine_torch"],
    "apex": ["apex"],
    "triton": ["triton"],
    "liger-kernel": ["liger-kernel"],
    "flash-attn": ["flash-attn", "flash_attn"],
    "transformers": ["transformers"],
}
TE_RANGE = ">=2.9,<2.12"  # the [gpu] extra's range: megatron-core 0.16's own Transformer Engine pin


def installed_versions() -> dict[str, str | None]:
    found = {}
    for shown, names in PACKAGES.items():
        found[shown] = None
        for name in names:
            try:
                found[shown] = metadata.version(name)
                break
            except metadata.PackageNotFoundError:
                continue
    return found


def _transformer_engine_import() -> str:
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception as error:  # any failure here is what the user needs to see
        return f"FAILED: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
    return "ok"


def platform_facts(platform: Platform) -> dict:
    import torch
    import torch.distributed as dist

    facts = {
        "cuda": platform.has_cuda,
        "torch_cuda_build": torch.version.cuda,
        "gpus": torch.cuda.device_count() if platform.has_cuda else 0,
        "gpu": platform.gpu_name,
        "compute_capability": "sm_{}{}".format(*platform.compute_capability) if platform.compute_capability else None,
        "bf16": platform.supports_bf16,
        "fp8": platform.supports_fp8,
        "transformer_engine": platform.has_transformer_engine,
        "apex_wgrad_fusion": platform.has_apex_wgrad_fusion,
        "nccl": None,
        "backends": [name for name, ok in (("nccl", dist.is_nccl_available()), ("gloo", dist.is_gloo_available()))
                     if ok],
        "process_groups": "nccl" if platform.has_cuda else "gloo (CPU compatibility layer)",
    }
    if platform.has_cuda and dist.is_nccl_available():
        version = torch.cuda.nccl.version()
        facts["nccl"] = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
    if platform.has_transformer_engine:
        facts["transformer_engine_import"] = _transformer_engine_import()
    return facts


def config_plan(config, platform: Platform) -> dict:
    """What the engine selects for `config` on `platform`, and what it would refuse."""
    from megatron_llm.config.validation import platform_problems
    from megatron_llm.kernels.fused_linear_cross_entropy import triton_usable
    from megatron_llm.model.builder import transformer_settings, use_transformer_engine
    from megatron_llm.runtime.gpu_env import recipe_environment

    problems = platform_problems(config, platform)
    te = use_transformer_engine(config, platform)
    plan = {"layers": "transformer_engine" if te else "local (megatron-core)",
            "precision": config.precision.dtype + (f" + fp8 {config.precision.fp8}" if config.precision.fp8 else ""),
            "problems": problems}
    if not problems:
        settings = transformer_settings(config, platform)
        for key in ("apply_rope_fusion", "cross_entropy_loss_fusion", "cross_entropy_fusion_impl",
                    "gradient_accumulation_fusion", "bias_activation_fusion", "masked_softmax_fusion",
                    "use_te_rng_tracker", "attention_backend"):
            value = settings[key]
            plan[key] = value.name if hasattr(value, "name") else value
    if config.model.fused_linear_cross_entropy:
        import torch

        device = torch.device("cuda" if platform.has_cuda else "cpu")
        plan["fused_linear_cross_entropy"] = "triton" if triton_usable(device) else "torch (chunked)"
    else:
        plan["fused_linear_cross_entropy"] = "off"
    plan["environment"] = recipe_environment(config, platform)
    return plan


def _print(report: dict) -> None:
    print("installed:")
    for name, version in report["installed"].items():
        note = ""
        if name == "transformer-engine" and version is None:
            note = f"   (GPU: pip install --no-build-isolation 'transformer_engine[pytorch]{TE_RANGE}')"
        print(f"  {name:28s} {version or 'not installed'}{note}")
    print("platform:")
    for key, value in report["platform"].items():
        print(f"  {key:28s} {value}")
    if "config" in report:
        print(f"config {report['config_path'] or '(built-in defaults)'} will use:")
        for key, value in report["config"].items():
            if key in ("problems", "environment"):
                continue
            print(f"  {key:28s} {value}")
        for key, value in report["config"]["environment"].items():
            print(f"  env {key:24s} {value}")
        for problem in report["config"]["problems"]:
            print(f"  REFUSED: {problem}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megatron-llm doctor", description=__doc__)
    parser.add_argument("--config", help="a YAML config: also show what it will use on this machine")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field (repeatable)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--env", action="store_true",
                        help="only print `export NAME=VALUE` for the recipe's process variables the environment "
                             "lacks (none without CUDA), for a launch script to eval; ignores train-only options")
    return parser


def environment_exports(config, platform: Platform) -> str:
    """Shell lines exporting the recipe variables (runtime/gpu_env.py) not already in this environment."""
    import os
    import shlex

    from megatron_llm.runtime.gpu_env import recipe_environment

    wanted = recipe_environment(config, platform)
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in wanted.items() if k not in os.environ)


def main(argv: list[str]) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not args.env:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    platform = detect_platform()
    if args.env:
        from megatron_llm.config.loader import load_config

        sys.stdout.write(environment_exports(load_config(args.config, args.overrides), platform))
        return 0
    report = {"installed": installed_versions(), "platform": platform_facts(platform)}
    if args.config or args.overrides:
        from megatron_llm.config.loader import load_config

        report["config_path"] = args.config
        report["config"] = config_plan(load_config(args.config, args.overrides), platform)
    if args.json:
        json.dump(report, sys.stdout, indent=1, default=str)
        print()
    else:
        _print(report)
    return 0
