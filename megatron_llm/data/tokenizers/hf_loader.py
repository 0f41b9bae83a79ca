"""What `transformers.AutoTokenizer.from_pretrained(directory)` makes, loaded in a short-lived helper process.

Megatron-LM's HuggingFaceTokenizer is whatever `AutoTokenizer` builds from the directory (tokenizer.json as
amended by tokenizer_config.json: added special tokens, post-processor), so only transformers can say what
its ids are. But transformers imports torch whenever torch is installed, over a second of start-up, and
preprocess-data must not import torch. The helper hides torch before importing transformers (a tokenizer
never needs it) and prints the finished backend's tokenizer.json and the special-token ids; the tests
compare the resulting ids with transformers loaded the ordinary way. Should the helper fail for any reason
other than an unloadable directory, the tokenizer is loaded in-process instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


class LoadError(Exception):
    """transformers could not load the directory (the message says why)."""


def describe(directory: str | Path) -> dict:
    """The loaded tokenizer's backend JSON ("tokenizer_json", None for a tokenizer without a Rust backend) and
    its ids; LoadError when transformers rejects the directory."""
    described = _describe_in_helper(str(directory))
    if described is None:
        described = _describe(str(directory), hide_torch=False)
    if "error" in described:
        raise LoadError(described["error"])
    return described


def _describe_in_helper(directory: str) -> dict | None:
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
    try:
        result = subprocess.run(
            [sys.executable, "-m", __name__, directory], capture_output=True, text=True, env=env, timeout=600
        )
        return json.loads(result.stdout.strip().splitlines()[-1]) if result.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def _describe(directory: str, hide_torch: bool) -> dict:
    if hide_torch:
        sys.modules["torch"] = None  # transformers then skips torch, as it does on a machine without it
    import transformers

    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError) as error:
        return {"error": str(error)}
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return {
        "tokenizer_json": backend.to_str() if backend is not None else None,
        "eos_id": tokenizer.eos_token_id,
        "bos_id": tokenizer.bos_token_id,
        "pad_id": tokenizer.pad_token_id,
        "unk_id": tokenizer.unk_token_id,
        "vocab_size": len(tokenizer),
        "special_tokens": list(tokenizer.all_special_tokens),
        "chat_template": getattr(tokenizer, "chat_template", None),
    }


if __name__ == "__main__":
    print(json.dumps(_describe(sys.argv[1], hide_torch=True)))
