"""Export time and peak RSS of `convert to-hf` for a ~1B-parameter checkpoint, against a safetensors floor.

The checkpoint (examples/configs/llama-1b.yaml, bf16, TP=1 PP=1) is generated here with the engine's own
`save_model_weights`. The export runs in a fresh process so its peak RSS is its own. The floor is the time
to read the exported tensors and write the same bytes again with safetensors alone, shard by shard. Both
start from a warm page cache (the checkpoint files are read once before the export, as the floor's input
was just written) and with dirty pages flushed (`os.sync()`), so the ratio compares the work done, not
the disk's cold-read speed or write-back of earlier phases.

    .venv/bin/python benchmarks/convert_export.py [--workdir DIR] [--config examples/configs/llama-1b.yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_checkpoint(config_path: Path, root: Path) -> None:
    from megatron_llm.config import load_config
    from megatron_llm.model.builder import build_model_chunks
    from megatron_llm.runtime.distributed import destroy_distributed, init_distributed
    from megatron_llm.runtime.hardware import detect_platform
    from megatron_llm.training.checkpoint.save_load import save_model_weights

    layout = ["parallel.tensor=1", "parallel.pipeline=1", "parallel.distributed_optimizer=false", "data.tokenizer=",
              "data.paths=[]", "data.synthetic=true"]
    config = load_config(config_path, layout)
    init_distributed(config.parallel)
    chunks = build_model_chunks(config, config.model.vocab_size, detect_platform())
    params = sum(p.numel() for p in chunks[0].parameters())
    save_model_weights(chunks, config, root)
    destroy_distributed()
    print(f"checkpoint: {params / 1e9:.2f}B parameters, {config.precision.dtype}, at {root}", flush=True)


def export_child(checkpoint: Path, out: Path) -> None:
    """Runs in a fresh process; RSS is sampled (ru_maxrss would include the parent's, kept across exec)."""
    import psutil

    from megatron_llm.convert.to_hf import export_to_hf

    peak, process = [0], psutil.Process()

    def sample() -> None:
        while True:
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.02)

    threading.Thread(target=sample, daemon=True).start()
    start, cpu = time.perf_counter(), time.process_time()
    result = export_to_hf(checkpoint, out, progress=False)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak[0] = max(peak[0], process.memory_info().rss)
    print(json.dumps({"seconds": elapsed, "cpu": cpu, "peak_rss": peak[0], "bytes": result.total_bytes}))


def warm(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                while f.read(64 << 20):
                    pass


def floor(hf_dir: Path, out: Path) -> tuple[float, float]:
    """Read every shard with safetensors and write the same tensors back, one shard at a time: (wall, cpu)."""
    from safetensors.torch import load_file, save_file

    out.mkdir()
    start, cpu = time.perf_counter(), time.process_time()
    for shard in sorted(hf_dir.glob("*.safetensors")):
        save_file(load_file(shard), str(out / shard.name), metadata={"format": "pt"})
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--config", type=Path, default=ROOT / "examples/configs/llama-1b.yaml")
    parser.add_argument("--checkpoint", type=Path, default=None, help="reuse this checkpoint instead of making one")
    parser.add_argument("--export-child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.export_child:
        export_child(*args.export_child)
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="convert-bench-"))
    try:
        checkpoint = args.checkpoint or work / "ckpt"
        if args.checkpoint is None:
            make_checkpoint(args.config, checkpoint)
        warm(checkpoint)
        os.sync()  # start each timed phase with no dirty pages left to throttle its writes
        child = subprocess.run([sys.executable, __file__, "--export-child", str(checkpoint), str(work / "hf")],
                               check=True, capture_output=True, text=True)
        measured = json.loads(child.stdout.strip().splitlines()[-1])
        os.sync()
        floor_s, floor_cpu = floor(work / "hf", work / "floor")
        gb = measured["bytes"] / 1e9
        print(f"export: {measured['seconds']:.1f} s ({measured['cpu']:.1f} s CPU) for {gb:.2f} GB, "
              f"peak RSS {measured['peak_rss'] / 1e9:.2f} GB")
        print(f"safetensors read+write floor: {floor_s:.1f} s ({floor_cpu:.1f} s CPU)")
        print(f"ratio export / floor: {measured['seconds'] / floor_s:.2f}x wall, "
              f"{measured['cpu'] / floor_cpu:.2f}x CPU (target <= 1.5x)")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
