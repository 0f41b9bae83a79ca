"""Hugging Face weight files: read tensors by name from (sharded) safetensors, write sharded safetensors + index."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open

from megatron_llm.errors import UsageError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


class SafetensorsReader:
    """Tensors of a HF model directory by name, each read on demand from its file (memory-mapped)."""

    def __init__(self, hf_dir: str | Path) -> None:
        self.dir = Path(hf_dir)
        index = self.dir / INDEX
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as exc:
                raise UsageError(f"{index}: unreadable index ({exc})") from None
        elif (self.dir / SINGLE).is_file():
            with safe_open(self.dir / SINGLE, framework="pt") as f:
                weight_map = {name: SINGLE for name in f.keys()}
        else:
            found = sorted(p.name for p in self.dir.glob("*.bin")) if self.dir.is_dir() else []
            hint = f" (found {', '.join(found)}: convert .bin weights to safetensors first)" if found else ""
            raise UsageError(f"{self.dir}: no {SINGLE} or {INDEX}{hint}")
        self.weight_map: dict[str, str] = weight_map
        self._files: dict[str, object] = {}

    def names(self) -> list[str]:
        return list(self.weight_map)

    def has(self, name: str) -> bool:
        return name in self.weight_map

    def _file(self, name: str):
        if name not in self.weight_map:
            raise UsageError(f"{self.dir}: tensor {name!r} is missing from the weight files")
        file = self.weight_map[name]
        if file not in self._files:
            path = self.dir / file
            if not path.is_file():
                raise UsageError(f"{path}: missing (listed in {INDEX} for {name!r})")
            try:
                self._files[file] = safe_open(path, framework="pt")
            except Exception as exc:  # safetensors' SafetensorError: a truncated or corrupt file
                raise UsageError(f"{path}: not a readable safetensors file ({exc})") from None
        return self._files[file]

    def get(self, name: str) -> torch.Tensor:
        return self._file(name).get_tensor(name)

    def shape(self, name: str) -> tuple[int, ...]:
        """The tensor's shape, read from the file header only."""
        return tuple(self._file(name).get_slice(name).get_shape())


_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


class StreamingSafetensorsWriter:
    """Writes planned tensors straight into `model-0000i-of-0000n.safetensors` shards as they arrive.

    The plan (names, shapes, dtype, in write order) is known before any weight is read, so each shard's
    header is written first and every tensor's bytes go to disk as soon as it is added: nothing is buffered
    beyond the tensor in hand. `add` refuses a tensor that is not the next one planned.
    """

    def __init__(self, out_dir: Path, plan: list[tuple[str, tuple[int, ...]]], dtype: torch.dtype,
                 max_shard_bytes: int = 2 << 30) -> None:
        self.out_dir, self.dtype = Path(out_dir), dtype
        itemsize = torch.empty((), dtype=dtype).element_size()
        sizes = [(name, tuple(shape), itemsize * _numel(shape)) for name, shape in plan]
        shards: list[list[tuple[str, tuple[int, ...], int]]] = [[]]
        filled = 0
        for entry in sizes:
            if shards[-1] and filled + entry[2] > max_shard_bytes:
                shards.append([])
                filled = 0
            shards[-1].append(entry)
            filled += entry[2]
        self.shard_names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        self._shards = shards
        self._queue = [(i, name, shape) for i, shard in enumerate(shards) for name, shape, _ in shard]
        self._next = 0
        self._file = None
        self._open_index = -1
        self.total_bytes = sum(size for _, _, size in sizes)

    def _open(self, index: int) -> None:
        if self._file is not None:
            self._file.close()
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, shape, size in self._shards[index]:
            header[name] = {"dtype": _SAFETENSORS_DTYPES[self.dtype], "shape": list(shape),
                            "data_offsets": [offset, offset + size]}
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self._file = open(self.out_dir / self.shard_names[index], "wb")
        self._file.write(len(raw).to_bytes(8, "little") + raw)
        self._open_index = index

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if self._next >= len(self._queue) or self._queue[self._next][1] != name:
            expected = self._queue[self._next][1] if self._next < len(self._queue) else "nothing"
            raise UsageError(f"internal: tensor {name!r} written out of order (expected {expected})")
        index, _, shape = self._queue[self._next]
        if tuple(tensor.shape) != shape:
            raise UsageError(f"{name}: shape {tuple(tensor.shape)}, expected {shape}")
        if index != self._open_index:
            self._open(index)
        data = tensor.detach().to(self.dtype).contiguous().reshape(-1).view(torch.uint8)
        self._file.write(memoryview(data.numpy()))
        self._next += 1

    def finish(self) -> list[str]:
        """Close the last shard and write the index; returns the shard file names."""
        if self._next != len(self._queue):
            raise UsageError(f"internal: tensor {self._queue[self._next][1]!r} was never written")
        if self._file is not None:
            self._file.close()
        weight_map = {name: self.shard_names[i] for i, name, _ in self._queue}
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.out_dir / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        return self.shard_names


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def publish(staging: Path, output: Path) -> None:
    """Rename a finished staging directory to `output` (replacing the empty directory a caller may have made)."""
    if output.exists():
        output.rmdir()
    os.replace(staging, output)
