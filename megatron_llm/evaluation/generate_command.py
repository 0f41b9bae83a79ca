"""`megatron-llm generate`: greedy or sampled (temperature, top-p) continuation of prompts.

One process (TP=PP=1; the checkpoint is resharded on load), batch size 1, with megatron-core's static
KV cache: the prompt runs once, then one token per step. Meant for checking a model, not for serving it.
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
                 seed: int = 0, kv_cache: bool = True) -> list[int]:
    """New token ids after `prompt`, stopping at a stop id (included) or `max_new_tokens`.

    Once the sequence is longer than `max_length`, each step re-runs the last `max_length` tokens without
    the cache (a sliding window), as the uncached loop (`kv_cache=False`) does throughout.
    """
    training = model.training
    model.eval()  # no dropout; megatron-core's KV cache path also requires eval mode without Transformer Engine
    try:
        return _generate(model, prompt, max_new_tokens, vocab_size, max_length, stop_ids, temperature, top_p,
                         seed, kv_cache)
    finally:
        model.train(training)


def _generate(model: torch.nn.Module, prompt: list[int], max_new_tokens: int, vocab_size: int, max_length: int,
              stop_ids: set[int], temperature: float, top_p: float, seed: int, kv_cache: bool) -> list[int]:
    from megatron.core.inference.contexts import StaticInferenceContext

    generator = torch.Generator().manual_seed(seed)
    cache = StaticInferenceContext(1, max_length) if kv_cache else None
    ids = list(prompt)
    pending = ids[-max_length:]  # tokens the cache has not seen yet
    new: list[int] = []
    for _ in range(max_new_tokens):
        if cache is not None and cache.sequence_len_offset + len(pending) > max_length:
            cache = None
        if cache is None:
            logits = _forward(model, ids[-max_length:], 0, None)
        else:
            logits = _forward(model, pending, cache.sequence_len_offset, cache)
            cache.increment_sequence_len_offset(len(pending))
            cache.enable_decode_mode()
        token = next_token(logits[0, -1, :vocab_size].float().cpu(), temperature, top_p, generator)
        ids.append(token)
        new.append(token)
        pending = [token]
        if token in stop_ids:
            break
    return new


def _forward(model: torch.nn.Module, tokens: list[int], start: int, cache: object | None) -> torch.Tensor:
    """Logits for `tokens` at positions start, start + 1, ...; through the KV cache when one is given."""
    ids = torch.tensor([tokens], dtype=torch.int64)
    positions = torch.arange(start, start + len(tokens), dtype=torch.int64)[None]
    if torch.cuda.is_available():
        ids, positions = ids.cuda(), positions.cuda()
    return model(ids, positions, None, inference_context=cache, runtime_gather_output=True)


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
