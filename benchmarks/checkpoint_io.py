"""Checkpoint save/load throughput against plain torch.save/torch.load, and how long async save blocks.

One process builds a Llama-style model of about 1.2 GB (fp32), then times, on the same tensors:
- `torch.save` / `torch.load` of the state dict (the baseline);
- our synchronous `save_checkpoint` (megatron-core torch_dist + per-file checksums + tracker; the first save
  is reported separately because it starts megatron's writer helper process) and
  `load_checkpoint` (checksum verification + torch_dist load);
- an asynchronous `save_checkpoint`: the time the caller is blocked (scheduling the save plus the
  commit when it finishes) as a fraction of the synchronous save time (target <= 10%).

Run: .venv/bin/python benchmarks/checkpoint_io.py [--hidden 1024 --layers 12 --dir /tmp/ckpt-bench]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import torch


def _size_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--dir", default="/tmp/megatron-llm-ckpt-bench")
    args = parser.parse_args()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29651")

    from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

    from megatron_llm.config.loader import load_config
    from megatron_llm.model.builder import build_model_chunks
    from megatron_llm.runtime.distributed import destroy_distributed, init_distributed
    from megatron_llm.runtime.hardware import detect_platform
    from megatron_llm.training.checkpoint.save_load import load_checkpoint, save_checkpoint

    root = Path(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    config = load_config(None, [f"model.hidden_size={args.hidden}", f"model.num_layers={args.layers}",
                                f"model.ffn_hidden_size={args.hidden * 4}", "model.num_attention_heads=8",
                                f"model.vocab_size={args.vocab}", "schedule.train_iters=1"])
    init_distributed(config.parallel)
    model = build_model_chunks(config, args.vocab, detect_platform())
    size = _size_bytes(model[0])
    print(f"model: {size / 1e9:.2f} GB of fp32 parameters", flush=True)

    state = {k: v for k, v in model[0].state_dict().items() if isinstance(v, torch.Tensor)}
    plain = root / "plain.pt"
    t = time.perf_counter()
    torch.save(state, plain)
    os.sync()
    torch_save = time.perf_counter() - t
    t = time.perf_counter()
    torch.load(plain, weights_only=True)
    torch_load = time.perf_counter() - t
    plain.unlink()

    t = time.perf_counter()
    save_checkpoint(root / "sync", model, config, step=1)
    os.sync()
    first_save = time.perf_counter() - t  # includes megatron's one-time start of its writer helper process
    t = time.perf_counter()
    save_checkpoint(root / "sync", model, config, step=2)
    os.sync()
    ours_save = time.perf_counter() - t
    t = time.perf_counter()
    load_checkpoint(root / "sync", model)
    ours_load = time.perf_counter() - t

    queue = AsyncCallsQueue()
    t = time.perf_counter()
    save_checkpoint(root / "async", model, config, step=3, async_queue=queue)
    blocked = time.perf_counter() - t
    start = time.perf_counter()
    while queue.get_num_unfinalized_calls():
        t = time.perf_counter()
        queue.maybe_finalize_async_calls(blocking=False)
        blocked += time.perf_counter() - t
        time.sleep(0.05)  # stands in for a training step between polls
    async_total = time.perf_counter() - start
    queue.close()

    gb = size / 1e9
    print(f"torch.save          {torch_save:6.2f} s  {gb / torch_save:5.2f} GB/s")
    print(f"torch.load          {torch_load:6.2f} s  {gb / torch_load:5.2f} GB/s")
    print(f"first save          {first_save:6.2f} s  (one-time writer start-up included)")
    print(f"save_checkpoint     {ours_save:6.2f} s  {gb / ours_save:5.2f} GB/s  "
          f"({torch_save / ours_save:.2f}x torch.save's throughput)")
    print(f"load_checkpoint     {ours_load:6.2f} s  {gb / ours_load:5.2f} GB/s  "
          f"({torch_load / ours_load:.2f}x torch.load's throughput)")
    print(f"async save: blocked {blocked:6.2f} s = {100 * blocked / ours_save:.1f}% of the synchronous save "
          f"(background write + commit took {async_total:.2f} s)")
    destroy_distributed()
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
