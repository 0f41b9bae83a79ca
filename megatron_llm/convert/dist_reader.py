"""Read tensors, or parts of them, from a torch_dist checkpoint in one process with no process group.

torch.distributed.checkpoint stores each rank's chunks of a tensor with their global offsets; this
reader asks for a region of the global tensor (e.g. one layer of a layer-stacked tensor) and reads only
the stored chunks that overlap it, so memory stays at one region at a time whatever the saved TP/PP
layout. Optimizer state and other entries are never touched.

A stored chunk is one `torch.save` archive inside a `.distcp` file. When its tensor is plain (contiguous,
uncompressed, little-endian, as torch_dist writes model weights) it is memory-mapped instead of loaded:
the bytes go from the page cache to the output file without an extra copy. Anything else is loaded with
`torch.load`.
"""

from __future__ import annotations

import collections
import io
import mmap
import pickle
import struct
import zipfile
from pathlib import Path

import torch
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex, TensorStorageMetadata
from torch.distributed.checkpoint.planner import LoadPlan, ReadItem
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from megatron_llm.errors import UsageError
from megatron_llm.training.checkpoint.safe_pickle import SafeFileSystemReader


class _RegionPlanner:
    """The minimal load-planner interface `FileSystemReader.read_data` calls: copy into one target."""

    def __init__(self, target: torch.Tensor) -> None:
        self.target = target

    def resolve_tensor(self, read_item: ReadItem) -> torch.Tensor:
        return _narrow(self.target, read_item.dest_offsets, read_item.lengths)

    def commit_tensor(self, read_item: ReadItem, tensor: torch.Tensor) -> None:
        pass

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        raise UsageError(f"{read_item.dest_index.fqn}: expected a tensor, found a serialized object")


class _FileWindow(io.RawIOBase):
    """The byte range [offset, offset + length) of an open file, as a seekable stream for torch.load."""

    def __init__(self, file: io.BufferedReader, offset: int, length: int) -> None:
        super().__init__()
        self.file, self.offset, self.length = file, offset, length
        self.file.seek(offset)

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.file.tell() - self.offset

    def seek(self, position: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: self.offset, io.SEEK_CUR: self.file.tell(), io.SEEK_END: self.offset + self.length}
        return self.file.seek(base[whence] + position) - self.offset

    def readinto(self, buffer) -> int:
        room = max(self.length - self.tell(), 0)
        view = memoryview(buffer)[:room]
        return self.file.readinto(view)


_STORAGE_DTYPES = {"FloatStorage": torch.float32, "BFloat16Storage": torch.bfloat16, "HalfStorage": torch.float16}


class _TensorRecord(pickle.Unpickler):
    """Reads a `torch.save` archive's data.pkl for a single tensor without its data:
    ((storage pid), storage offset, size, stride). Refuses anything else."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda storage, offset, size, stride, *rest: (storage, offset, tuple(size), tuple(stride))
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"not a plain tensor ({module}.{name})")

    def persistent_load(self, pid):
        return tuple(pid)


def _contiguous_strides(sizes: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(sizes):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def _mapped_tensor(path: Path, offset: int, length: int, dtype: torch.dtype,
                   sizes: tuple[int, ...]) -> torch.Tensor | None:
    """The tensor of the torch.save archive at [offset, offset + length) of `path`, memory-mapped, or None
    when it is not a plain contiguous tensor of `dtype` and `sizes`."""
    with open(path, "rb") as file:
        window = _FileWindow(file, offset, length)
        try:
            archive = zipfile.ZipFile(window)
            names = {info.filename: info for info in archive.infolist()}
            prefix = next(name[: -len("data.pkl")] for name in names if name.endswith("data.pkl"))
            record = _TensorRecord(io.BytesIO(archive.read(prefix + "data.pkl"))).load()
            byteorder = archive.read(prefix + "byteorder") if prefix + "byteorder" in names else b"little"
            (_, storage_type, key, _, numel), storage_offset, size, stride = record
        except (zipfile.BadZipFile, pickle.UnpicklingError, StopIteration, KeyError, TypeError, ValueError):
            return None
        data = names.get(prefix + "data/0")
        count = torch.Size(sizes).numel()
        itemsize = torch.empty((), dtype=dtype).element_size()
        if (data is None or key != "0" or _STORAGE_DTYPES[storage_type] != dtype or numel != count
                or storage_offset != 0 or size != tuple(sizes) or stride != _contiguous_strides(tuple(sizes))
                or byteorder != b"little" or data.compress_type != zipfile.ZIP_STORED
                or data.file_size != count * itemsize or sum(n.startswith(prefix + "data/") for n in names) != 1):
            return None
        window.seek(data.header_offset)
        header = window.read(30)
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        start = offset + data.header_offset + 30 + name_length + extra_length
        aligned = start - start % mmap.ALLOCATIONGRANULARITY
        mapped = mmap.mmap(file.fileno(), start - aligned + data.file_size, offset=aligned, access=mmap.ACCESS_COPY)
    flat = torch.frombuffer(mapped, dtype=torch.uint8, count=data.file_size, offset=start - aligned)
    return flat.view(dtype).view(sizes)


class TorchDistReader:
    """Region reads from `directory` (an `iter_*` checkpoint directory written by dist_checkpointing)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        if not (self.directory / ".metadata").is_file():
            raise UsageError(f"{self.directory / '.metadata'}: missing (not a torch_dist checkpoint)")
        self._reader = SafeFileSystemReader(str(self.directory))
        self.metadata = self._reader.read_metadata()
        self._reader.set_up_storage_reader(self.metadata, is_coordinator=True)

    def has(self, key: str) -> bool:
        return isinstance(self.metadata.state_dict_metadata.get(key), TensorStorageMetadata)

    def _entry(self, key: str) -> TensorStorageMetadata:
        entry = self.metadata.state_dict_metadata.get(key)
        if not isinstance(entry, TensorStorageMetadata):
            raise UsageError(f"{self.directory}: tensor {key!r} is missing from the checkpoint")
        return entry

    def shape(self, key: str) -> torch.Size:
        return self._entry(key).size

    def dtype(self, key: str) -> torch.dtype:
        return self._entry(key).properties.dtype

    def read(self, key: str, offsets: tuple[int, ...] | None = None,
             sizes: tuple[int, ...] | None = None) -> torch.Tensor:
        """The region [offsets, offsets + sizes) of global tensor `key` (the whole tensor by default)."""
        entry = self._entry(key)
        offsets = tuple(offsets) if offsets is not None else (0,) * len(entry.size)
        sizes = tuple(sizes) if sizes is not None else tuple(entry.size)
        region = ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes))
        items = create_read_items_for_chunk_list(key, entry, [region])
        covered, wanted = sum(item.lengths.numel() for item in items), torch.Size(sizes).numel()
        if covered < wanted:
            raise UsageError(f"{self.directory}: tensor {key!r} is incomplete (stored chunks cover {covered} of "
                             f"{wanted} elements of the requested region)")
        if len(items) == 1 and tuple(items[0].lengths) == sizes:
            stored = self._read_stored(items[0])
            if stored is not None:
                return _narrow(stored, items[0].storage_offsets, items[0].lengths)
        target = torch.empty(sizes, dtype=entry.properties.dtype)
        items = [_with_index(item, key) for item in items]
        self._reader.read_data(LoadPlan(items), _RegionPlanner(target)).wait()
        return target

    def _read_stored(self, item: ReadItem) -> torch.Tensor | None:
        """One stored chunk, loaded without the copy into a separate target (None if it is transformed)."""
        info = self._reader.storage_data[item.storage_index]
        if info.transform_descriptors:
            return None
        index = item.storage_index
        entry = self._entry(index.fqn)
        chunk = entry.chunks[index.index] if index.index is not None else None
        if chunk is None or chunk.offsets != index.offset:
            chunk = next(c for c in entry.chunks if c.offsets == index.offset)
        mapped = _mapped_tensor(self.directory / info.relative_path, info.offset, info.length,
                                entry.properties.dtype, tuple(chunk.sizes))
        if mapped is not None:
            return mapped
        with open(self.directory / info.relative_path, "rb") as file:
            return torch.load(_FileWindow(file, info.offset, info.length), map_location="cpu", weights_only=True)

    def read_layer(self, key: str, layer: int, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """Layer `layer` of a layer-stacked tensor ([num_layers, ...] in the checkpoint), or its rows
        [start, stop) along the first per-layer dimension."""
        shape = self.shape(key)
        if layer >= shape[0]:
            raise UsageError(f"{self.directory}: tensor {key!r} has {shape[0]} layers, layer {layer} requested")
        start, stop = rows if rows is not None else (0, shape[1])
        rest = tuple(shape[2:])
        return self.read(key, (layer, start) + (0,) * len(rest), (1, stop - start) + rest)[0]


def _narrow(tensor: torch.Tensor, offsets: torch.Size, lengths: torch.Size) -> torch.Tensor:
    for dim, (offset, length) in enumerate(zip(offsets, lengths)):
        tensor = tensor.narrow(dim, offset, length)
    return tensor


def _with_index(item: ReadItem, key: str) -> ReadItem:
    """ReadItems whose destination index names the key only (our planner ignores it)."""
    return ReadItem(type=item.type, dest_index=MetadataIndex(key), dest_offsets=item.dest_offsets,
                    storage_index=item.storage_index, storage_offsets=item.storage_offsets, lengths=item.lengths)
