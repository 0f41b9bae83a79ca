"""Per-sequence log-probabilities through megatron-core's pipeline schedules, in any TP/PP/DP layout.

GPTModel given labels returns the per-token loss -log p(label) (vocab-parallel cross entropy handles a
tensor-parallel split); summing it under a mask gives the log-probability of a continuation. Sequences are
spread over data-parallel ranks, the results exist on the last pipeline stage, and one all-reduce gives
every rank every result. This serves multiple-choice scoring, perplexity and DPO's reference model.

With `vocab` given, the forward pass returns the logits instead (gathered over tensor-parallel ranks), cut to
the first `vocab` entries (the exported model's vocabulary, without the padding rows), and the log-softmax is
taken in float64: this also says whether every scored token was the greedy choice (lm-evaluation-harness's
`is_greedy`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_llm.training.forward import forward_batch, holds_loss, to_device


@dataclass
class Scored:
    """Per sequence: summed log-probability and number of scored tokens (float64, on the CPU)."""

    logprob: torch.Tensor
    num_tokens: torch.Tensor
    greedy: torch.Tensor | None = None  # with `vocab`: 1.0 where every scored token was the argmax


def pad_sequence(ids: list[int], mask: list[bool], seq_length: int, pad_id: int) -> dict[str, torch.Tensor]:
    """A training-style sample from token ids and a per-token scoring mask (the label's mask).

    Longer sequences keep their last `seq_length + 1` tokens (the context is cut from the left).
    """
    ids, mask = ids[-(seq_length + 1):], mask[-(seq_length + 1):]
    n = len(ids) - 1
    tokens = torch.full((seq_length,), pad_id, dtype=torch.int64)
    labels = torch.full((seq_length,), pad_id, dtype=torch.int64)
    loss_mask = torch.zeros(seq_length, dtype=torch.float32)
    tokens[:n] = torch.tensor(ids[:-1], dtype=torch.int64)
    labels[:n] = torch.tensor(ids[1:], dtype=torch.int64)
    loss_mask[:n] = torch.tensor(mask[1:], dtype=torch.float32)
    return {"tokens": tokens, "labels": labels, "loss_mask": loss_mask,
            "position_ids": torch.arange(seq_length, dtype=torch.int64)}


def _micro_batches(samples: list[dict], indices: list[int], micro_batch_size: int) -> Iterator[dict]:
    for start in range(0, len(indices), micro_batch_size):
        chosen = indices[start:start + micro_batch_size]
        batch = {key: torch.stack([samples[i][key] for i in chosen]) for key in samples[0]}
        batch["index"] = torch.tensor(chosen, dtype=torch.int64)
        yield batch


def _forward_step(data_iterator, model):
    batch = next(data_iterator)
    index, mask = batch.pop("index"), batch["loss_mask"]
    output = forward_batch(model, batch)

    def loss_func(per_token_loss: torch.Tensor):
        per_token = per_token_loss.float().cpu().reshape(mask.shape)
        logprob = -(per_token * mask).sum(dim=1).double()
        zero = per_token_loss.sum() * 0.0
        return zero, torch.tensor(1, dtype=torch.int), {"index": index, "logprob": logprob,
                                                         "num_tokens": mask.sum(dim=1).double()}

    return output, loss_func


def _logits_forward_step(vocab: int):
    def step(data_iterator, model):
        batch = next(data_iterator)
        index, mask, labels = batch.pop("index"), batch["loss_mask"], batch["labels"]
        moved = to_device(batch)
        output = model(moved["tokens"], moved["position_ids"], None, runtime_gather_output=True)

        def loss_func(logits: torch.Tensor):
            logp = torch.log_softmax(logits[..., :vocab].double().cpu(), dim=-1)
            picked = logp.gather(-1, labels[..., None]).squeeze(-1)
            greedy = (logp.argmax(dim=-1) == labels) | (mask == 0)
            zero = logits.sum() * 0.0
            return zero, torch.tensor(1, dtype=torch.int), {
                "index": index, "logprob": (picked * mask).sum(dim=1), "num_tokens": mask.sum(dim=1).double(),
                "greedy": greedy.all(dim=1).double()}

        return output, loss_func

    return step


@torch.no_grad()
def score_samples(model: list, samples: list[dict], seq_length: int, micro_batch_size: int,
                  vocab: int | None = None) -> Scored:
    """Summed log-probability of the masked labels of every sample (all of length `seq_length`).

    Every rank must call this with the same samples; every rank gets every result.
    """
    dp_rank = parallel_state.get_data_parallel_rank()
    dp_size = parallel_state.get_data_parallel_world_size()
    count = len(samples)
    per_rank = -(-count // dp_size)
    per_rank = -(-per_rank // micro_batch_size) * micro_batch_size
    # Every rank runs the same number of micro-batches; ranks past the end repeat sample 0 (ignored).
    indices = [dp_rank * per_rank + k for k in range(per_rank)]
    indices = [i if i < count else 0 for i in indices]
    valid = [dp_rank * per_rank + k < count for k in range(per_rank)]
    logprob = torch.zeros(count, dtype=torch.float64)
    num_tokens = torch.zeros(count, dtype=torch.float64)
    greedy = torch.zeros(count, dtype=torch.float64)
    modes = [chunk.training for chunk in model]
    for chunk in model:
        chunk.eval()
    if per_rank:
        iterators = [_micro_batches(samples, indices, micro_batch_size) for _ in model]
        outputs = get_forward_backward_func()(
            forward_step_func=_forward_step if vocab is None else _logits_forward_step(vocab),
            data_iterator=iterators if len(model) > 1 else iterators[0],
            model=model,
            num_microbatches=per_rank // micro_batch_size,
            seq_length=seq_length,
            micro_batch_size=micro_batch_size,
            forward_only=True,
        )
        if holds_loss():
            flags = iter(valid)
            for item in outputs:
                flags_of = item.get("greedy", torch.zeros(len(item["index"]), dtype=torch.float64))
                for i, lp, nt, g in zip(item["index"].tolist(), item["logprob"], item["num_tokens"], flags_of):
                    if next(flags):
                        logprob[i] = lp
                        num_tokens[i] = nt
                        greedy[i] = g
    for chunk, mode in zip(model, modes):
        chunk.train(mode)
    both = torch.stack([logprob, num_tokens, greedy])
    if torch.cuda.is_available():
        both = both.cuda()
    torch.distributed.all_reduce(both)
    both = both.cpu()
    return Scored(both[0], both[1], both[2] if vocab is not None else None)
