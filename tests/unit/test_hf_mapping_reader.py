"""The torch_dist chunk reader's memory-mapped fast path: used only for plain tensors, exact when used."""

import io

import torch

from megatron_llm.convert.dist_reader import _mapped_tensor


def _archive(tensor: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    torch.save(tensor, buffer)
    return buffer.getvalue()


def test_plain_tensors_are_mapped_exactly_at_any_offset_and_others_fall_back(tmp_path):
    plain = torch.randn(33, 17).to(torch.bfloat16)
    transposed = torch.randn(17, 33).t()  # same storage size, not contiguous
    padding = b"x" * 12345
    blobs = [padding, _archive(plain), _archive(transposed), _archive({"not": "a tensor"})]
    path = tmp_path / "__0_0.distcp"
    path.write_bytes(b"".join(blobs))
    offsets = [sum(len(b) for b in blobs[:i]) for i in range(len(blobs))]

    mapped = _mapped_tensor(path, offsets[1], len(blobs[1]), torch.bfloat16, (33, 17))
    assert mapped is not None and torch.equal(mapped, plain)
    assert _mapped_tensor(path, offsets[1], len(blobs[1]), torch.float32, (33, 17)) is None
    assert _mapped_tensor(path, offsets[1], len(blobs[1]), torch.bfloat16, (17, 33)) is None
    assert _mapped_tensor(path, offsets[2], len(blobs[2]), torch.float32, (33, 17)) is None
    assert _mapped_tensor(path, offsets[3], len(blobs[3]), torch.float32, (1,)) is None
    assert _mapped_tensor(path, 0, len(padding), torch.float32, (1,)) is None
