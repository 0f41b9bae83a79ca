"""Each parallelism and memory feature visibly acts, observed from outside the engine during one real training
step on 2 processes (the equivalence tests alone would pass if a feature were silently ignored):

- activation recompute: the transformer layers (full) or the attention cores (selective) run forward again
  in the backward pass, so their forward calls double;
- sequence parallel: a transformer layer's input is the sequence split over the tensor-parallel ranks;
- virtual pipeline: two model chunks per rank, each run once per micro-batch by megatron-core's interleaved
  schedule;
- data parallel: the ranks read disjoint samples whose union is the step's global batch;
- distributed optimizer: the Adam state on each rank is about half of what each rank holds without it.
"""

from __future__ import annotations

import json

import pytest

from tests.distributed.conftest import torchrun

GBS, MBS, SEQ, HIDDEN, LAYERS = 8, 2, 64, 64, 4


@pytest.fixture(scope="module")
def observed(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    torchrun(2, "tests/distributed/features_worker.py", str(root / "out.json"), str(root))
    return json.loads((root / "out.json").read_text())


def test_recompute_runs_the_forward_again(observed):
    for rank in range(2):
        base = observed["dp2"][rank]["calls"]
        micro = observed["dp2"][rank]["num_microbatches"]
        assert base["layer"] == LAYERS * micro and base["core_attention"] == LAYERS * micro
        full = observed["dp2-recompute-full"][rank]["calls"]
        assert full["layer"] == 2 * base["layer"]
        selective = observed["dp2-recompute-selective"][rank]["calls"]
        assert selective["core_attention"] == 2 * base["core_attention"]
        assert selective["layer"] == base["layer"]


def test_sequence_parallel_splits_the_layer_input_over_tensor_ranks(observed):
    for rank in range(2):
        assert observed["tp2"][rank]["layer_input_shape"] == [SEQ, MBS, HIDDEN]
        assert observed["tp2-sp"][rank]["layer_input_shape"] == [SEQ // 2, MBS, HIDDEN]


def test_virtual_pipeline_runs_two_chunks_with_the_interleaved_schedule(observed):
    for rank in range(2):
        plain, virtual = observed["pp2"][rank], observed["pp2-vpp2"][rank]
        assert plain["chunks"] == 1 and plain["schedule"] == "forward_backward_pipelining_without_interleaving"
        assert virtual["chunks"] == 2 and virtual["schedule"] == "forward_backward_pipelining_with_interleaving"
        micro = virtual["num_microbatches"]
        assert virtual["calls"]["chunk0"] == virtual["calls"]["chunk1"] == micro == GBS // MBS
        assert plain["layers_on_rank"] == virtual["layers_on_rank"] == LAYERS // 2


def test_data_parallel_ranks_read_disjoint_shares_of_the_global_batch(observed):
    ranks = observed["dp2"]
    assert [r["dp_size"] for r in ranks] == [2, 2] and sorted(r["dp_rank"] for r in ranks) == [0, 1]
    shares = [{tuple(sample) for sample in r["samples"]} for r in ranks]
    assert all(len(share) == GBS // 2 for share in shares)
    assert not shares[0] & shares[1]
    global_batch = {tuple(sample) for sample in ranks[0]["global_batch"]}
    assert len(global_batch) == GBS and shares[0] | shares[1] == global_batch


def test_distributed_optimizer_shards_the_optimizer_state(observed):
    whole = [r["optimizer_state_bytes"] for r in observed["dp2"]]
    sharded = [r["optimizer_state_bytes"] for r in observed["dp2-distopt"]]
    assert whole[0] == whole[1] > 0
    for part in sharded:
        assert part / whole[0] == pytest.approx(0.5, rel=0.02)
    assert sum(sharded) == pytest.approx(whole[0], rel=0.02)
