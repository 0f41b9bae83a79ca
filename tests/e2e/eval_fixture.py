"""A small trained checkpoint and its Hugging Face export, shared by the evaluation tests.

The tiny example model is trained for a few dozen steps on standard-library docstrings (real text, so its
next-token distributions are peaked and greedy choices are not near ties), then exported with `convert to-hf`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
TRAIN_STEPS = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command_env(**extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           **OFFLINE, **extra}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    return env


def run(*args: str, timeout: int = 1800, torchrun: int = 0) -> subprocess.CompletedProcess:
    """A megatron-llm command in its own process (under torchrun with `torchrun` processes when > 0)."""
    if torchrun:
        port = str(free_port())
        head = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={torchrun}",
                "--master-addr=127.0.0.1", f"--master-port={port}", "-m", "megatron_llm"]
    else:
        head = [sys.executable, "-m", "megatron_llm"]
    result = subprocess.run([*head, *args], cwd=REPO, env=command_env(), capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"megatron-llm {args[0]} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                    f"{result.stderr[-5000:]}")
    return result


def build(root: Path) -> dict:
    """Tokenizer, shard, a trained checkpoint (run dir `root/run`) and its export (`root/hf`)."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from megatron_llm.data.curate.corpus import stdlib_docstrings
    from megatron_llm.data.tokenizers.tokenizer import load_tokenizer
    from megatron_llm.posttrain import synthetic

    texts = stdlib_docstrings(300, min_chars=200)
    tok_dir = synthetic.write_tokenizer(root / "tok", texts, 400)
    tok = load_tokenizer(tok_dir)
    builder = IndexedDatasetBuilder(str(root / "docs.bin"), dtype=np.int32)
    for text in texts:
        ids = tok.encode(text) + [tok.eod_id]
        builder.add_document(ids, [len(ids)])
    builder.finalize(str(root / "docs.idx"))
    run("train", "--config", "examples/configs/tiny.yaml", "--set", f"data.tokenizer={tok_dir}",
        "--set", f"data.paths=[{root / 'docs'}]", "--set", "data.synthetic=false", "--set", "data.split=95,5,0",
        "--set", f"schedule.train_iters={TRAIN_STEPS}", "--set", f"checkpoint.save_interval={TRAIN_STEPS}",
        "--set", "logging.progress=false", "--set", "logging.tensorboard=false", "--run-dir", str(root / "run"))
    run("convert", "to-hf", "--checkpoint", str(root / "run/checkpoints"), "--output", str(root / "hf"),
        "--no-progress")
    return {"root": root, "tok": tok, "tok_dir": tok_dir, "checkpoints": root / "run/checkpoints",
            "hf": root / "hf", "texts": texts}
