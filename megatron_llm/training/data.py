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


SPLIT_NAMES = ("train", "valid", "test")


def _split_matrix(split: str) -> list:
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix,
        parse_and_normalize_split,
    )

    try:
        vector = parse_and_normalize_split(split)
    except (AssertionError, ValueError, ZeroDivisionError):
        raise UsageError(f"data.split={split!r}: expected three non-negative weights like '969,30,1'") from None
    return convert_split_vector_to_split_matrix(vector)


def _split_tokens(tokens_per_doc: np.ndarray, bookends: tuple[float, float]) -> tuple[int, int]:
    """(documents, tokens) of one split, with megatron-core's rounding of the split's book-ends."""
    count = len(tokens_per_doc)
    begin, end = int(round(bookends[0] * count)), int(round(bookends[1] * count))
    return end - begin, int(tokens_per_doc[begin:end].sum())


def _working_split(tokens_per_doc: np.ndarray, read: list[bool], need: int) -> str | None:
    """The first 'T,V,0' (V = 1..50 percent) whose read splits all hold `need` tokens, if any."""
    for valid in range(1, 51):
        matrix = _split_matrix(f"{100 - valid},{valid},0")
        if all(_split_tokens(tokens_per_doc, matrix[i])[1] >= need for i in range(2) if read[i]):
            return f"{100 - valid},{valid},0"
    return None


def check_shards(prefixes: list[str], vocab_size: int, split: str, read: list[bool], seq_length: int) -> list:
    """Before megatron-core sees them: every shard is a consistent dataset whose token ids fit the vocabulary,
    and every split that will be read holds at least one sample (`seq_length + 1` tokens) of every shard
    (megatron-core loops forever on an empty split). Returns the split matrix with unread splits removed."""
    from megatron_llm.data.shards.checks import check_dataset, check_vocabulary, document_tokens
    from megatron_llm.data.shards.indexed_writer import read_index

    matrix = _split_matrix(split)
    matrix = [bookends if read[i] else None for i, bookends in enumerate(matrix)]
    if read[1] and matrix[1] is None:
        raise UsageError(f"data.split={split!r} leaves no validation data, but schedule.eval_iters > 0 reads it "
                         "(give the valid split a weight, or set schedule.eval_iters=0)")
    need = seq_length + 1
    for prefix in prefixes:
        check_dataset(prefix, require_documents=True)
        check_vocabulary(prefix, vocab_size)
        per_doc = document_tokens(read_index(prefix))
        for i, bookends in enumerate(matrix):
            if bookends is None:
                continue
            documents, tokens = _split_tokens(per_doc, bookends)
            if tokens < need:
                fix = _working_split(per_doc, read, need)
                hint = f"; data.split={fix!r} would work" if fix else "; add data or lower data.seq_length"
                raise UsageError(
                    f"data.split={split!r}: the {SPLIT_NAMES[i]} split of {prefix} gets {documents} of "
                    f"{len(per_doc)} documents ({tokens} tokens), fewer than one sample of {need} tokens{hint}")
    return matrix


class _MegatronTokenizerAdapter:
    """The attributes of a MegatronTokenizer that GPTDataset reads."""

    def __init__(self, info: TokenizerInfo) -> None:
        self.vocab_size = info.vocab_size
        self.eod = info.eod
        self.pad = info.pad
        self.unique_identifiers = {"vocab_size": info.vocab_size, "eod": info.eod, "pad": info.pad}


def build_datasets(config: Config, train_iters: int, info: TokenizerInfo,
                   packed_format: bool = False) -> tuple[object, object]:
    """Train and validation datasets sized for the whole run. With `data.document_mask`, samples carry an
    explicit block-causal attention mask, unless `packed_format` (Transformer Engine's THD attention takes
    the document boundaries from the position ids instead)."""
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
    read = [True, s.eval_iters > 0, False]
    matrix = check_shards(prefixes, info.vocab_size, d.split, read, d.seq_length)
    dataset_config = GPTDatasetConfig(
        random_seed=s.seed,
        sequence_length=d.seq_length,
        blend=(prefixes, weights),
        split=d.split,
        path_to_cache=d.cache_dir,
        tokenizer=_MegatronTokenizerAdapter(info),
        reset_position_ids=d.document_mask,
        reset_attention_mask=d.document_mask,
        eod_mask_loss=d.eod_mask_loss,
        create_attention_mask=d.document_mask and not packed_format,
    )
    dataset_config.split_matrix = matrix  # splits that are never read are not built
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
