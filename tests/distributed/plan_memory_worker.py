"""Worker for test_plan_memory: train one step per layout, then measure what each rank allocated.

Run under torchrun. argv: output directory, then one JSON list of `--set` overrides per layout. For each
layout every rank writes `<out>/<layout>-<rank>.json` with the bytes of the storages behind the model's
parameters (weights), DDP's gradient buffers (gradients) and the optimizer's parameters and state not
already counted (optimizer: fp32 master copies, Adam moments, step counters), the number of parameter
elements the rank holds, and the FLOPs per step the trainer uses for its TFLOP/s and MFU.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch


def _storage_bytes(tensors) -> dict[int, int]:
    found = {}
    for tensor in tensors:
        if tensor is not None:
            storage = tensor.untyped_storage()
            found[storage.data_ptr()] = storage.nbytes()
    return found


def measure(trainer) -> dict:
    weights = _storage_bytes(p for chunk in trainer.model for p in chunk.parameters())
    grads = _storage_bytes(b.grad_data for chunk in trainer.model for b in chunk.buffers)
    optimizers = getattr(trainer.optimizer, "chained_optimizers", [trainer.optimizer])
    state = []
    for optimizer in optimizers:
        for group in optimizer.optimizer.param_groups:
            state += list(group["params"])
        for values in optimizer.optimizer.state.values():
            state += [v for v in values.values() if torch.is_tensor(v)]
    optim = {k: v for k, v in _storage_bytes(state).items() if k not in weights and k not in grads}
    numel = sum(p.numel() for chunk in trainer.model for p in chunk.parameters())
    return {"weights": sum(weights.values()), "gradients": sum(grads.values()),
            "optimizer": sum(optim.values()), "numel": numel}


def main() -> None:
    warnings.filterwarnings("ignore")
    from megatron.core import parallel_state

    from megatron_llm.config.loader import load_config
    from megatron_llm.runtime.distributed import destroy_distributed
    from megatron_llm.training.setup import build_trainer

    out = Path(sys.argv[1])
    for index, overrides in enumerate(sys.argv[2:]):
        config = load_config(None, json.loads(overrides))
        trainer = build_trainer(config, out / f"run{index}")
        trainer.fit()
        record = measure(trainer)
        record.update(pipeline_rank=parallel_state.get_pipeline_model_parallel_rank(),
                      data_parallel_rank=parallel_state.get_data_parallel_rank(),
                      tensor_rank=parallel_state.get_tensor_model_parallel_rank(),
                      flops_per_step=trainer.flops_per_sample * trainer.config.schedule.global_batch_size)
        rank = torch.distributed.get_rank()
        (out / f"{index}-{rank}.json").write_text(json.dumps(record))
        torch.distributed.barrier()
        parallel_state.destroy_model_parallel()
    destroy_distributed()


if __name__ == "__main__":
    main()
