"""Runs under torchrun with 2 processes: one training step in each of several configurations, observing from
outside the engine whether a feature acts (forward hooks, the batches the forward step receives, the
optimizer's state). argv: OUT_JSON RUN_ROOT; rank 0 writes {case: observations}.
"""

import json
import os
import sys
from collections import Counter
from pathlib import Path

import torch
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.transformer_layer import TransformerLayer

from megatron_llm.config import load_config
from megatron_llm.config.validation import validate
from megatron_llm.runtime.hardware import detect_platform
from megatron_llm.training.setup import build_trainer
from megatron_llm.training.task import PretrainTask

TINY = Path(__file__).parents[2] / "examples/configs/tiny.yaml"
COMMON = ["schedule.train_iters=1", "optim.warmup_iters=0", "schedule.eval_iters=0", "logging.tensorboard=false",
          "logging.progress=false", "checkpoint.save_interval=null"]
CASES = {
    "dp2": [],
    "dp2-distopt": ["parallel.distributed_optimizer=true"],
    "dp2-recompute-full": ["model.recompute=full"],
    "dp2-recompute-selective": ["model.recompute=selective"],
    "tp2": ["parallel.tensor=2"],
    "tp2-sp": ["parallel.tensor=2", "parallel.sequence_parallel=true"],
    "pp2": ["parallel.pipeline=2"],
    "pp2-vpp2": ["parallel.pipeline=2", "parallel.virtual_pipeline=2"],
}


class RecordingTask(PretrainTask):
    """Pre-training, noting the tokens of every micro-batch the forward step receives."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[list[int]]] = []

    def forward_step(self, data_iterator, model):
        batch = next(data_iterator)
        self.seen.append(batch["tokens"].tolist())
        return super().forward_step(iter([batch]), model)


def optimizer_state_bytes(optimizer) -> int:
    total = 0
    for sub in getattr(optimizer, "chained_optimizers", [optimizer]):
        for state in sub.optimizer.state.values():
            total += sum(t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t) and t.dim() > 0)
    return total


def observe(name: str, overrides: list[str], run_root: Path) -> dict:
    config = load_config(TINY, COMMON + overrides)
    validate(config, int(os.environ["WORLD_SIZE"]), detect_platform())
    task = RecordingTask()
    trainer = build_trainer(config, run_root / name, task=task)
    calls: Counter = Counter()
    shapes: list[list[int]] = []
    for index, chunk in enumerate(trainer.model):
        chunk.register_forward_pre_hook(lambda module, args, i=index: calls.update([f"chunk{i}"]))
        for module in chunk.modules():
            if isinstance(module, TransformerLayer):
                module.register_forward_hook(lambda *_: calls.update(["layer"]))
                if not shapes:
                    module.register_forward_pre_hook(
                        lambda mod, args, kwargs: shapes.append(list(kwargs.get("hidden_states", args[0]
                                                                                if args else None).shape)),
                        with_kwargs=True)
            if isinstance(module, DotProductAttention):
                module.register_forward_hook(lambda *_: calls.update(["core_attention"]))
    trainer.fit()
    s = config.schedule
    observed = {
        "rank": torch.distributed.get_rank(),
        "dp_rank": parallel_state.get_data_parallel_rank(),
        "dp_size": parallel_state.get_data_parallel_world_size(),
        "calls": dict(calls),
        "layer_input_shape": shapes[0] if shapes else None,
        "chunks": len(trainer.model),
        "schedule": get_forward_backward_func().__name__,
        "num_microbatches": trainer.num_microbatches,
        "samples": [sample for micro in task.seen for sample in micro],
        "global_batch": [trainer.train_data[i]["tokens"].tolist() for i in range(s.global_batch_size)],
        "optimizer_state_bytes": optimizer_state_bytes(trainer.optimizer),
        "layers_on_rank": sum(isinstance(m, TransformerLayer) for c in trainer.model for m in c.modules()),
    }
    parallel_state.destroy_model_parallel()
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, observed)
    return gathered


def main() -> None:
    output, run_root = Path(sys.argv[1]), Path(sys.argv[2])
    results = {name: observe(name, overrides, run_root) for name, overrides in CASES.items()}
    if torch.distributed.get_rank() == 0:
        output.write_text(json.dumps(results))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
