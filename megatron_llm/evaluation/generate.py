"""`megatron-llm generate`: greedy or sampled (temperature, top-p) continuation of prompts.

One process (TP=PP=1; the checkpoint is resharded on load). Each new token re-runs the whole sequence
(no KV cache): meant for checking a model, not for serving it.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from megatron_llm.errors import UsageError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megatron-llm generate", description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="checkpoint root or iter_* directory")
    parser.add_argument("--prompt", action="append", required=True, help="prompt text (repeatable)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--chat", action="store_true", help="wrap each prompt as a user turn with the chat "
                        "template and continue as the assistant")
    parser.add_argument("--tokenizer", help="tokenizer directory (default: the checkpoint's)")
    parser.add_argument("--json", action="store_true", help="print JSON lines")
    return parser


def next_token(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """Greedy when temperature is 0; otherwise sample from the top-p nucleus of softmax(logits / T)."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        sorted_probs[before >= top_p] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))


@torch.no_grad()
def generate_ids(model: torch.nn.Module, prompt: list[int], max_new_tokens: int, vocab_size: int,
                 max_length: int, stop_ids: set[int], temperature: float = 0.0, top_p: float = 1.0,
                 seed: int = 0) -> list[int]:
    """New token ids after `prompt`, stopping at a stop id (included) or `max_new_tokens`."""
    generator = torch.Generator().manual_seed(seed)
    ids = list(prompt)
    new: list[int] = []
    for _ in range(max_new_tokens):
        context = ids[-max_length:]
        tokens = torch.tensor([context], dtype=torch.int64)
        positions = torch.arange(len(context), dtype=torch.int64)[None]
        if torch.cuda.is_available():
            tokens, positions = tokens.cuda(), positions.cuda()
        logits = model(tokens, positions, None)
        token = next_token(logits[0, -1, :vocab_size].float().cpu(), temperature, top_p, generator)
        ids.append(token)
        new.append(token)
        if token in stop_ids:
            break
    return new


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise UsageError("--temperature must be >= 0 and --top-p in (0, 1]")
    from megatron_llm.runtime.distributed import destroy_distributed, process_info

    if process_info().world_size != 1:
        raise UsageError("generate runs in one process (run it without torchrun)")
    from megatron_llm.evaluation.loading import load_for_inference
    from megatron_llm.posttrain.chat import encode_prompt
    from megatron_llm.posttrain.run import chat_template

    try:
        loaded = load_for_inference(args.checkpoint, [], args.tokenizer)
        tok, config = loaded.tokenizer, loaded.config
        template = chat_template(tok)[0] if args.chat else None
        for k, prompt in enumerate(args.prompt):
            if template is not None:
                ids = encode_prompt([{"role": "user", "content": prompt}], template, tok)
            else:
                ids = list(tok.encode(prompt))
            new = generate_ids(loaded.model[0], ids, args.max_new_tokens, tok.vocab_size,
                               config.model.max_position_embeddings, {tok.eod_id}, args.temperature, args.top_p,
                               args.seed + k)
            text = tok.decode([t for t in new if t != tok.eod_id])
            if args.json:
                print(json.dumps({"prompt": prompt, "completion": text, "tokens": new}))
            else:
                print(text)
            sys.stdout.flush()
    finally:
        destroy_distributed()
    return 0
