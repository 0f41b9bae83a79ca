"""Our training loop against a bare megatron-core loop: same model, same batches, one process, alternating.

The bare loop is what any megatron-core user writes: zero the grad buffers, `forward_backward_func`,
`optimizer.step()`, `scheduler.step()`. Ours adds the global loss reduction, NaN/skip handling, metrics
(jsonl + TensorBoard), progress and hooks. Prints both step times, the ratio (target <= 1.05) and the tiny
model's CPU tokens/s.

    python benchmarks/engine_overhead.py [--rounds 5] [--steps 20] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

from megatron_llm.config import load_config

warnings.filterwarnings("ignore")


def bare_steps(trainer, num_steps: int, start_sample: int) -> float:
    from megatron.core.pipeline_parallel import get_forward_backward_func

    s = trainer.config.schedule
    data = trainer._iterators(trainer.train_data, start_sample, num_steps)
    forward_backward = get_forward_backward_func()
    begin = time.perf_counter()
    for _ in range(num_steps):
        for chunk in trainer.model:
            chunk.zero_grad_buffer()
        trainer.optimizer.zero_grad()
        forward_backward(forward_step_func=trainer.task.forward_step, data_iterator=data[0] if len(data) == 1 else data,
                         model=trainer.model, num_microbatches=trainer.num_microbatches,
                         seq_length=trainer.config.data.seq_length, micro_batch_size=s.micro_batch_size,
                         forward_only=False)
        trainer.optimizer.step()
        trainer.scheduler.step(increment=s.global_batch_size)
    return time.perf_counter() - begin


def our_steps(trainer, num_steps: int) -> float:
    # Bound the round by the loop's own end condition (exit_interval would also save a checkpoint).
    trainer.train_iters = trainer.state.step + num_steps
    begin = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - begin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    from megatron_llm.training.setup import build_trainer

    total = 2 * args.rounds * args.steps + args.steps
    config = load_config("examples/configs/tiny.yaml", [
        f"schedule.train_iters={total}", "schedule.eval_iters=0", "logging.progress=false",
        "logging.log_interval=1", *args.overrides])
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = build_trainer(config, Path(run_dir))
        our_steps(trainer, args.steps)  # warm-up: first-step allocations, TensorBoard writer start
        ours, bare = [], []
        for _ in range(args.rounds):
            ours.append(our_steps(trainer, args.steps) / args.steps)
            bare.append(bare_steps(trainer, args.steps, trainer.state.consumed_samples) / args.steps)
    tokens = config.schedule.global_batch_size * config.data.seq_length
    ours_median, bare_median = statistics.median(ours), statistics.median(bare)
    print(f"bare megatron-core loop: {bare_median * 1e3:8.2f} ms/step (median of {args.rounds} x {args.steps})")
    print(f"megatron-llm loop:       {ours_median * 1e3:8.2f} ms/step")
    print(f"ratio ours/bare:         {ours_median / bare_median:8.3f}   (target <= 1.05)")
    print(f"tiny model on CPU:       {tokens / ours_median:8.0f} tokens/s (ours), {tokens / bare_median:.0f} (bare)")


if __name__ == "__main__":
    main()
