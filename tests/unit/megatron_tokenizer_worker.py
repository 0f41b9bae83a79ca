"""Tokenizes texts with Megatron-LM's own default tokenizers: megatron-core 0.16.1's
`megatron.core.tokenizers.text.utils.build_tokenizer`, the function Megatron-LM's tools/preprocess_data.py calls,
given the namespace its argument parser makes (flag defaults from Megatron-LM 0.16.1's `_add_tokenizer_args`).

Run as a script in its own process, so that the Hugging Face hub settings in its environment (an offline cache
holding the `gpt2` files GPT2BPETokenizer asks for) take effect. argv: SPEC_JSON OUT_JSON; the spec is
{"texts": [...], "tokenizers": {name: {flag: value}}}; the output is {name: {"ids", "eod", "vocab_size"}}.
"""

import argparse
import json
import sys
from pathlib import Path

FLAG_DEFAULTS = {
    "tokenizer_type": None,
    "tokenizer_model": None,
    "vocab_file": None,
    "merge_file": None,
    "tokenizer_special_tokens": None,
    "tokenizer_sentencepiece_legacy": False,
    "tokenizer_hf_use_fast": False,
    "tokenizer_hf_include_special_tokens": False,
    "trust_remote_code": False,
    "tokenizer_metadata": None,
    "tiktoken_pattern": None,
    "tiktoken_num_special_tokens": 1000,
    "vocab_size": None,
}


def main() -> None:
    from megatron.core.tokenizers.text.utils.build_tokenizer import build_tokenizer

    spec = json.loads(Path(sys.argv[1]).read_text())
    out = {}
    for name, flags in spec["tokenizers"].items():
        tokenizer = build_tokenizer(argparse.Namespace(**{**FLAG_DEFAULTS, **flags}))
        out[name] = {
            "ids": [list(tokenizer.tokenize(text)) for text in spec["texts"]],
            "eod": tokenizer.eod,
            "vocab_size": tokenizer.vocab_size,
        }
    Path(sys.argv[2]).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
