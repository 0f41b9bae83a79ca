"""Training batches: Megatron indexed shards through megatron-core's GPTDataset, or a synthetic stream.

Every rank reads the same global batch of `global_batch_size` samples per step and takes its own
micro-batches from it (the order Megatron-LM's pretraining sampler uses), so the samples a step trains on
do not depend on the parallel layout, and a run resumes from `consumed_samples` alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from megatron_llm.config.schema import Config
from megatron_llm.errors import UsageError

NO_PAD = -1  # megatron-core's pad id for tokenizers without one (never a real token id)


@dataclass(frozen=True)
class TokenizerInfo:
    """What megatron-core's GPTDataset needs of a tokenizer: vocabulary size, EOD and pad ids."""

    vocab_size: int
    eod: int
    pad: int


def tokenizer_info(config: Config) -> TokenizerInfo:
    if config.data.tokenizer:
        from megatron_llm.data.tokenizers.tokenizer import load_tokenizer

        tok = load_tokenizer(config.data.tokenizer)
        pad = tok.pad_id if tok.pad_id is not None and tok.pad_id != tok.eod_id else NO_PAD
        vocab = tok.vocab_size
        if config.model.vocab_size is not None and config.model.vocab_size < vocab:
            raise UsageError(
                f"model.vocab_size={config.model.vocab_size} is smaller than the tokenizer's {vocab} "
                f"({config.data.tokenizer})"
            )
        return TokenizerInfo(config.model.vocab_size or vocab, tok.eod_id, pad)
    vocab = config.model.vocab_size
    return TokenizerInfo(vocab, vocab - 1, NO_PAD)


class SyntheticDataset:
    """A deterministic, learnable token stream: a seeded sparse Markov chain over the vocabulary.

    Each token has four possible successors, so the loss can fall from ln(vocab) towards ln(4); sample i
    depends only on (seed, split, i), so any process produces the same sample for the same index.
    """

    SUCCESSORS = 4

    def __init__(self, vocab_size: int, seq_length: int, seed: int, split: int, num_samples: int) -> None:
        self.seq_length = seq_length
        self.seed = seed
        self.split = split
        self.num_samples = num_samples
        table_rng = np.random.default_rng(seed)
        self.successors = table_rng.integers(0, vocab_size, size=(vocab_size, self.SUCCESSORS))

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.split, int(index)])
        choices = rng.integers(0, self.SUCCESSORS, size=self.seq_length)
        text = np.empty(self.seq_length + 1, dtype=np.int64)
        text[0] = rng.integers(0, len(self.successors))
        for i, choice in enumerate(choices):
            text[i + 1] = self.successors[text[i], choice]
        tokens = torch.from_numpy(text[:-1].copy())
        return {
            "tokens": tokens,
            "labels": torch.from_numpy(text[1:].copy()),
            "loss_mask": torch.ones(self.seq_length, dtype=torch.float32),
            "position_ids": torch.arange(self.seq_length, dtype=torch.int64),
        }


def parse_blend(paths: list) -> tuple[list[str], list[float] | None]:
    """`[prefix]`, `[prefixA, prefixB]` or `[0.7, prefixA, 0.3, prefixB]` -> (prefixes, weights)."""
    if paths and all(isinstance(p, str) for p in paths):
        return [str(p) for p in paths], None
    weights, prefixes = paths[0::2], paths[1::2]
    try:
        weights = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise UsageError(f"data.paths: weights must be numbers, got {paths!r}") from None
    return [str(p) for p in prefixes], weights


def _check_prefixes(prefixes: list[str]) -> None:
    for prefix in prefixes:
        for suffix in (".bin", ".idx"):
            if not Path(prefix + suffix).is_file():
                raise UsageError(f"data.paths: {prefix + suffix} not found")


class _MegatronTokenizerAdapter:
    """The attributes of a MegatronTokenizer that GPTDataset reads."""

    def __init__(self, info: TokenizerInfo) -> None:
        self.vocab_size = info.vocab_size
        self.eod = info.eod
        self.pad = info.pad
        self.unique_identifiers = {"vocab_size": info.vocab_size, "eod": info.eod, "pad": info.pad}


def build_datasets(config: Config, train_iters: int, info: TokenizerInfo) -> tuple[object, object]:
    """Train and validation datasets sized for the whole run."""
    s, d = config.schedule, config.data
    train_samples = train_iters * s.global_batch_size
    valid_samples = max(s.eval_iters, 1) * s.global_batch_size
    if not d.paths:
        return (
            SyntheticDataset(info.vocab_size, d.seq_length, s.seed, 0, train_samples),
            SyntheticDataset(info.vocab_size, d.seq_length, s.seed, 1, valid_samples),
        )
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    prefixes, weights = parse_blend(d.paths)
    _check_prefixes(prefixes)
    dataset_config = GPTDatasetConfig(
        random_seed=s.seed,
        sequence_length=d.seq_length,
        blend=(prefixes, weights),
        split=d.split,
        path_to_cache=d.cache_dir,
        tokenizer=_MegatronTokenizerAdapter(info),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=d.eod_mask_loss,
        create_attention_mask=False,
    )
    train, valid, _ = BlendedMegatronDatasetBuilder(
        GPTDataset, [train_samples, valid_samples, 0], lambda: True, dataset_config
    ).build()
    if train is None:
        raise UsageError(f"data.split={d.split!r} leaves no training data")
    return train, valid


_BATCH_KEYS = ("tokens", "labels", "loss_mask", "position_ids", "attention_mask")


def _collate(samples: list[dict]) -> dict[str, torch.Tensor]:
    keys = [k for k in _BATCH_KEYS if k in samples[0] and samples[0][k] is not None]
    return {k: torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in keys}


def micro_batches(
    dataset: object,
    start_sample: int,
    num_steps: int,
    global_batch_size: int,
    micro_batch_size: int,
    dp_rank: int,
    dp_size: int,
) -> Iterator[dict[str, torch.Tensor]]:
    """This DP rank's micro-batches for `num_steps` global batches starting at sample `start_sample`."""
    per_step = global_batch_size // (micro_batch_size * dp_size)
    size = len(dataset)
    for step in range(num_steps):
        base = start_sample + step * global_batch_size
        for micro in range(per_step):
            first = base + (micro * dp_size + dp_rank) * micro_batch_size
            yield _collate([dataset[(first + i) % size] for i in range(micro_batch_size)])
