"""Mapping objects: how one megatron-core GPTModel tensor corresponds to Hugging Face tensors.

Each mapping states, for one megatron tensor (a name with `*` in place of the layer number when it
exists once per decoder layer), which HF tensors it becomes and with what shapes, how to export it,
how to import it, and how megatron-core splits it across tensor-parallel ranks. `tables.py` lists them
per architecture; `to_hf` and `from_hf` only walk a table.

Megatron names are the layout-free keys of a torch_dist checkpoint (the norms under the
Transformer-Engine keys megatron-core stores them as, whichever layer spec trained the model); a
mapping's `aliases` are the other names a built model may give the same parameter (megatron-core's
local layer spec). Megatron tensors here are global: merged over tensor-parallel ranks, one layer at a
time, the vocabulary padded to the model's padded size.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from megatron_llm.config.schema import ModelConfig
from megatron_llm.errors import UsageError

LAYER = "*"

Shape = tuple[str, ...]  # symbolic: names of model sizes, resolved by Dims
Rows = tuple[int, int] | None  # rows [start, stop) of a megatron tensor's first dimension; None: all of it
ReadMegatron = Callable[[Rows], torch.Tensor]


@dataclass(frozen=True)
class Dims:
    """The sizes a mapping needs: the model's, the true vocabulary (HF) and megatron's padded one."""

    model: ModelConfig
    vocab_size: int
    padded_vocab_size: int

    def size(self, name: str) -> int:
        m = self.model
        sizes = {"vocab_size": self.vocab_size, "padded_vocab_size": self.padded_vocab_size,
                 "hidden_size": m.hidden_size, "intermediate_size": m.ffn_hidden_size, "head_dim": m.head_dim,
                 "heads x head_dim": m.num_attention_heads * m.head_dim,
                 "kv_heads x head_dim": m.query_groups * m.head_dim}
        return sizes[name]

    def shape(self, shape: Shape) -> tuple[int, ...]:
        return tuple(self.size(name) for name in shape)


def at_layer(pattern: str, layer: int | None) -> str:
    """A name pattern with the layer wildcard filled in (names without one are returned as they are)."""
    return pattern if layer is None else pattern.replace(LAYER, str(layer))


class ParamMapping(ABC):
    """One megatron tensor <-> one or more HF tensors."""

    tp_dim: int | None = None  # the dimension megatron-core splits across TP ranks (None: replicated)

    def __init__(self, megatron: str, aliases: tuple[str, ...] = ()) -> None:
        self.megatron, self.aliases = megatron, tuple(aliases)

    @property
    def per_layer(self) -> bool:
        return LAYER in self.megatron

    @property
    def checkpoint_key(self) -> str:
        """The torch_dist key: per-layer tensors are stored stacked on a leading [num_layers] axis."""
        return self.megatron.replace(LAYER + ".", "")

    @abstractmethod
    def hf_shapes(self, dims: Dims) -> dict[str, Shape]:
        """The HF tensors this mapping exports (name patterns -> symbolic shapes), in writing order."""

    def hf_sources(self, dims: Dims) -> dict[str, Shape]:
        """The HF tensors the import reads (the exported ones, unless the tensor is tied to another)."""
        return self.hf_shapes(dims)

    def hf_tolerated(self, dims: Dims) -> tuple[str, ...]:
        """HF tensors a model directory may hold that the import does not need."""
        return ()

    @abstractmethod
    def megatron_shape(self, dims: Dims) -> tuple[int, ...]:
        """The global megatron tensor's shape (of one layer, for a per-layer tensor)."""

    @abstractmethod
    def export(self, read: ReadMegatron, dims: Dims) -> dict[str, torch.Tensor]:
        """Megatron -> HF tensors keyed as in `hf_shapes`; `read(rows)` fetches (rows of) the megatron tensor."""

    @abstractmethod
    def to_megatron(self, hf: Mapping[str, torch.Tensor], dims: Dims) -> torch.Tensor:
        """HF tensors keyed as in `hf_sources` -> the global megatron tensor."""

    def tp_shard(self, full: torch.Tensor, rank: int, size: int) -> torch.Tensor:
        """TP rank `rank`'s part of the global tensor, as megatron-core's layers hold it."""
        if self.tp_dim is None or size == 1:
            return full
        return torch.chunk(full, size, self.tp_dim)[rank]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.megatron!r})"


class Direct(ParamMapping):
    """The same tensor under another name."""

    def __init__(self, megatron: str, hf: str, shape: Shape, tp_dim: int | None = None,
                 aliases: tuple[str, ...] = ()) -> None:
        super().__init__(megatron, aliases)
        self.hf, self.shape, self.tp_dim = hf, tuple(shape), tp_dim

    def hf_shapes(self, dims: Dims) -> dict[str, Shape]:
        return {self.hf: self.shape}

    def megatron_shape(self, dims: Dims) -> tuple[int, ...]:
        return dims.shape(self.shape)

    def export(self, read: ReadMegatron, dims: Dims) -> dict[str, torch.Tensor]:
        return {self.hf: read(None)}

    def to_megatron(self, hf: Mapping[str, torch.Tensor], dims: Dims) -> torch.Tensor:
        return hf[self.hf]


class Vocab(ParamMapping):
    """A [vocabulary, hidden] tensor: megatron pads the rows (sliced off on export, zero-filled on import).
    With `tied_to`, a tied model exports nothing here and imports the tensor it is tied to."""

    tp_dim = 0

    def __init__(self, megatron: str, hf: str, tied_to: str | None = None) -> None:
        super().__init__(megatron)
        self.hf, self.tied_to = hf, tied_to

    def _tied(self, dims: Dims) -> bool:
        return self.tied_to is not None and dims.model.tie_embeddings

    def hf_shapes(self, dims: Dims) -> dict[str, Shape]:
        return {} if self._tied(dims) else {self.hf: ("vocab_size", "hidden_size")}

    def hf_sources(self, dims: Dims) -> dict[str, Shape]:
        return {(self.tied_to if self._tied(dims) else self.hf): ("vocab_size", "hidden_size")}

    def hf_tolerated(self, dims: Dims) -> tuple[str, ...]:
        return (self.hf,) if self._tied(dims) else ()

    def megatron_shape(self, dims: Dims) -> tuple[int, ...]:
        return dims.shape(("padded_vocab_size", "hidden_size"))

    def export(self, read: ReadMegatron, dims: Dims) -> dict[str, torch.Tensor]:
        return {self.hf: unpad_vocab(read(None), dims.vocab_size, self.megatron)}

    def to_megatron(self, hf: Mapping[str, torch.Tensor], dims: Dims) -> torch.Tensor:
        source = self.tied_to if self._tied(dims) else self.hf
        return pad_vocab(hf[source], dims.padded_vocab_size)


class QKV(ParamMapping):
    """megatron's fused, per-query-group `linear_qkv` <-> HF's separate q, k, v projections.

    The megatron tensor is [groups, heads_per_group + 2, head_dim, *columns]: each group's query heads,
    then its key head, then its value head (query head j is in group j // heads_per_group, as HF's
    repeat_kv assumes). `columns` is ("hidden_size",) for the weight and () for the bias. TP ranks hold
    contiguous row blocks (megatron-core gathers them back when there are fewer groups than ranks)."""

    tp_dim = 0

    def __init__(self, megatron: str, q: str, k: str, v: str, columns: Shape = ("hidden_size",)) -> None:
        super().__init__(megatron)
        self.q, self.k, self.v, self.columns = q, k, v, tuple(columns)

    def hf_shapes(self, dims: Dims) -> dict[str, Shape]:
        return {self.q: ("heads x head_dim", *self.columns), self.k: ("kv_heads x head_dim", *self.columns),
                self.v: ("kv_heads x head_dim", *self.columns)}

    @staticmethod
    def _groups(dims: Dims) -> tuple[int, int, int]:
        groups = dims.model.query_groups
        return groups, dims.model.num_attention_heads // groups, dims.model.head_dim

    def megatron_shape(self, dims: Dims) -> tuple[int, ...]:
        groups, per_group, head_dim = self._groups(dims)
        return (groups * (per_group + 2) * head_dim, *dims.shape(self.columns))

    def export(self, read: ReadMegatron, dims: Dims) -> dict[str, torch.Tensor]:
        qkv = read(None)
        groups, per_group, head_dim = self._groups(dims)
        expected = groups * (per_group + 2) * head_dim
        if qkv.shape[0] != expected:
            raise UsageError(f"{self.megatron}: {qkv.shape[0]} rows, expected {expected} = query_groups x "
                             f"(heads_per_group + 2) x head_dim = {groups} x {per_group + 2} x {head_dim}")
        tail = qkv.shape[1:]
        grouped = qkv.reshape(groups, per_group + 2, head_dim, *tail)
        return {self.q: grouped[:, :per_group].reshape(groups * per_group * head_dim, *tail).contiguous(),
                self.k: grouped[:, per_group].reshape(groups * head_dim, *tail).contiguous(),
                self.v: grouped[:, per_group + 1].reshape(groups * head_dim, *tail).contiguous()}

    def to_megatron(self, hf: Mapping[str, torch.Tensor], dims: Dims) -> torch.Tensor:
        groups, per_group, head_dim = self._groups(dims)
        q, k, v = hf[self.q], hf[self.k], hf[self.v]
        tail = q.shape[1:]
        grouped = torch.cat([q.reshape(groups, per_group, head_dim, *tail), k.reshape(groups, 1, head_dim, *tail),
                             v.reshape(groups, 1, head_dim, *tail)], dim=1)
        return grouped.reshape(groups * (per_group + 2) * head_dim, *tail).contiguous()


class GatedMLP(ParamMapping):
    """megatron's `linear_fc1` = [gate; up] <-> HF's gate and up projections.

    TP rank r holds [gate_r; up_r] (each half split in contiguous blocks), not the r-th block of the
    stacked tensor. The export reads the two halves separately, each a plain row range of the checkpoint."""

    tp_dim = 0

    def __init__(self, megatron: str, gate: str, up: str) -> None:
        super().__init__(megatron)
        self.gate, self.up = gate, up

    def hf_shapes(self, dims: Dims) -> dict[str, Shape]:
        return {self.gate: ("intermediate_size", "hidden_size"), self.up: ("intermediate_size", "hidden_size")}

    def megatron_shape(self, dims: Dims) -> tuple[int, ...]:
        return (2 * dims.model.ffn_hidden_size, dims.model.hidden_size)

    def export(self, read: ReadMegatron, dims: Dims) -> dict[str, torch.Tensor]:
        ffn = dims.model.ffn_hidden_size
        return {self.gate: read((0, ffn)).contiguous(), self.up: read((ffn, 2 * ffn)).contiguous()}

    def to_megatron(self, hf: Mapping[str, torch.Tensor], dims: Dims) -> torch.Tensor:
        return torch.cat([hf[self.gate], hf[self.up]], dim=0)

    def tp_shard(self, full: torch.Tensor, rank: int, size: int) -> torch.Tensor:
        if size == 1:
            return full
        gate, up = torch.chunk(full, 2, dim=0)
        return torch.cat([torch.chunk(gate, size, 0)[rank], torch.chunk(up, size, 0)[rank]], dim=0)


def unpad_vocab(tensor: torch.Tensor, vocab_size: int, name: str) -> torch.Tensor:
    """Drop megatron's vocabulary padding rows."""
    if tensor.shape[0] < vocab_size:
        raise UsageError(f"{name}: {tensor.shape[0]} rows, fewer than the vocabulary size {vocab_size}")
    return tensor[:vocab_size].contiguous()


def pad_vocab(tensor: torch.Tensor, padded_size: int) -> torch.Tensor:
    """Add zero rows up to megatron's padded vocabulary size (they are sliced off again on export)."""
    if tensor.shape[0] == padded_size:
        return tensor
    pad = torch.zeros(padded_size - tensor.shape[0], *tensor.shape[1:], dtype=tensor.dtype)
    return torch.cat([tensor, pad], dim=0)
