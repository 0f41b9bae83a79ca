"""Batched generation in any TP/PP/DP layout, with megatron-core's static KV cache.

Every step runs one forward pass through megatron-core's pipeline schedule (forward only): the prompt once,
then one new token per sequence, each pipeline stage keeping the keys and values of its own layers in the
cache. The last pipeline stage picks the next tokens and broadcasts them to the other stages; tensor-parallel
ranks see the same gathered logits and pick the same tokens. Requests are spread over the data-parallel
replicas and gathered on every rank at the end.

A batch holds prompts of one length (the cache has no padding mask): requests are grouped by prompt length,
then cut into batches of `batch_size`. A sequence ends at the end-of-document token, at a stop string, or
after `max_new_tokens`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func


@dataclass
class Request:
    prompt: list[int]
    max_new_tokens: int
    stop: list[str] = field(default_factory=list)
    temperature: float = 0.0
    seed: int = 0


@dataclass
class Generated:
    tokens: list[int]  # new tokens, up to and including the one that completed a stop string or the eod
    text: str  # decoded new tokens, cut before the first stop string (eod excluded)


def _logits_step(model: list, tokens: torch.Tensor, start: int, cache: object) -> torch.Tensor | None:
    """Last-position logits (B, V) on the last pipeline stage (None elsewhere), through the schedule."""
    positions = torch.arange(start, start + tokens.shape[1], dtype=torch.int64)[None].expand_as(tokens)
    if torch.cuda.is_available():
        tokens, positions = tokens.cuda(), positions.cuda()

    def forward_step(data_iterator, chunk):
        output = chunk(tokens, positions, None, inference_context=cache, runtime_gather_output=True)
        return output, None

    outputs = get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=[iter([None]) for _ in model] if len(model) > 1 else None,
        model=model, num_microbatches=1, seq_length=tokens.shape[1], micro_batch_size=tokens.shape[0],
        forward_only=True)
    if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        return outputs[0][:, -1, :].float()
    return None


def _broadcast_tokens(chosen: torch.Tensor | None, batch: int) -> torch.Tensor:
    """The next tokens from the last pipeline stage to every stage of this pipeline."""
    if parallel_state.get_pipeline_model_parallel_world_size() == 1:
        return chosen
    buffer = chosen if chosen is not None else torch.zeros(batch, dtype=torch.int64)
    if torch.cuda.is_available():
        buffer = buffer.cuda()
    torch.distributed.broadcast(buffer, parallel_state.get_pipeline_model_parallel_last_rank(),
                                group=parallel_state.get_pipeline_model_parallel_group())
    return buffer.cpu()


def _pick(logits: torch.Tensor, requests: list[Request], generators: list[torch.Generator], vocab: int) -> torch.Tensor:
    out = torch.empty(len(requests), dtype=torch.int64)
    for row, request in enumerate(requests):
        values = logits[row, :vocab].cpu()
        if request.temperature <= 0:
            out[row] = int(torch.argmax(values))
        else:
            probs = torch.softmax(values.double() / request.temperature, dim=-1)
            out[row] = int(torch.multinomial(probs, 1, generator=generators[row]))
    return out


def _stop_index(text: str, stops: list[str]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None


@torch.no_grad()
def generate_batch(model: list, requests: list[Request], decode: Callable[[list[int]], str], eod: int, vocab: int,
                   max_length: int) -> list[Generated]:
    """Generate for requests whose prompts have the same length; every rank of the model group calls it."""
    from megatron.core.inference.contexts import StaticInferenceContext

    length = len(requests[0].prompt)
    budget = max(r.max_new_tokens for r in requests)
    if length + budget > max_length:
        raise ValueError(f"prompt ({length}) + new tokens ({budget}) exceed the model's {max_length} positions")
    cache = StaticInferenceContext(len(requests), length + budget)
    generators = [torch.Generator().manual_seed(r.seed) for r in requests]
    new: list[list[int]] = [[] for _ in requests]
    done = [False] * len(requests)
    pending = torch.tensor([r.prompt for r in requests], dtype=torch.int64)
    modes = [chunk.training for chunk in model]
    for chunk in model:
        chunk.eval()  # no dropout; megatron-core's KV cache path needs eval mode without Transformer Engine
    try:
        for _ in range(budget):
            logits = _logits_step(model, pending, cache.sequence_len_offset, cache)
            cache.increment_sequence_len_offset(pending.shape[1])
            cache.enable_decode_mode()
            chosen = _pick(logits, requests, generators, vocab) if logits is not None else None
            chosen = _broadcast_tokens(chosen, len(requests))
            for row, request in enumerate(requests):
                if done[row]:
                    continue
                token = int(chosen[row])
                new[row].append(token)
                if token == eod or len(new[row]) >= request.max_new_tokens or (
                        request.stop and _stop_index(decode(new[row]), request.stop) is not None):
                    done[row] = True
            if all(done):
                break
            pending = chosen[:, None]
    finally:
        for chunk, mode in zip(model, modes):
            chunk.train(mode)
    out = []
    for tokens, request in zip(new, requests):
        text = decode([t for t in tokens if t != eod])
        cut = _stop_index(text, request.stop)
        out.append(Generated(tokens, text if cut is None else text[:cut]))
    return out


def generate_all(model: list, requests: list[Request], decode: Callable[[list[int]], str], eod: int, vocab: int,
                 max_length: int, batch_size: int) -> list[Generated]:
    """Every request's generation on every rank: requests grouped by prompt length, spread over data-parallel
    replicas, gathered at the end. Every rank must pass the same requests."""
    dp_rank = parallel_state.get_data_parallel_rank()
    dp_size = parallel_state.get_data_parallel_world_size()
    order = sorted(range(len(requests)), key=lambda i: (len(requests[i].prompt), i))
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and len(requests[batches[-1][0]].prompt) == len(
                requests[i].prompt):
            batches[-1].append(i)
        else:
            batches.append([i])
    mine = {}
    for b, batch in enumerate(batches):
        if b % dp_size == dp_rank:
            results = generate_batch(model, [requests[i] for i in batch], decode, eod, vocab, max_length)
            mine.update(zip(batch, results))
    if dp_size == 1:
        return [mine[i] for i in range(len(requests))]
    gathered: list = [None] * dp_size
    torch.distributed.all_gather_object(gathered, mine, group=parallel_state.get_data_parallel_group())
    merged = {k: v for part in gathered for k, v in part.items()}
    return [merged[i] for i in range(len(requests))]
