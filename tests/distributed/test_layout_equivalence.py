"""The core promise: every parallel layout trains the tiny model exactly like one process does.

Same initial weights (the engine's layout-independent initialisation), same global batches, 5 optimizer
steps: losses and gradient norms must agree with the single-process run to 1e-5 relative in fp32.
"""

import json

import pytest

from tests.distributed.conftest import torchrun

WORKER = "tests/distributed/layout_worker.py"
RTOL = 1e-5
Z_LOSS = "optim.z_loss=0.01"  # 100x PaLM's 1e-4, so the term moves the loss by far more than RTOL

LAUNCHES = {
    "tp-pp-dp": (
        2,
        [
            ["parallel.tensor=2"],
            ["parallel.pipeline=2"],
            [],
            # Uneven stages with explicit counts: 1 layer on the first stage, 3 on the last.
            ["parallel.pipeline=2", "parallel.first_stage_layers=1", "parallel.last_stage_layers=3"],
        ],
    ),
    "sp-vpp-distopt": (
        2,
        [
            ["parallel.tensor=2", "parallel.sequence_parallel=true"],
            ["parallel.pipeline=2", "parallel.virtual_pipeline=2"],
            ["parallel.distributed_optimizer=true"],
            # z-loss over vocabulary shards: compared with the single process with the same z-loss.
            ["parallel.tensor=2", Z_LOSS],
        ],
    ),
    "recompute": (
        2,
        [
            ["parallel.tensor=2", "parallel.sequence_parallel=true", "model.recompute=selective"],
            ["parallel.pipeline=2", "model.recompute=full"],
            # megatron's block method: the first layer of each stage's 2 recomputed, the second kept.
            ["parallel.pipeline=2", "model.recompute=full", "model.recompute_method=block",
             "model.recompute_num_layers=1"],
            # Embedding and loss counted as layers: 4 + 2 slots over 2 stages x 3 virtual stages, so the very
            # first chunk holds only the embedding and the very last only the final norm, output layer and loss.
            ["parallel.pipeline=2", "parallel.virtual_pipeline=3", "parallel.account_for_embedding=true",
             "parallel.account_for_loss=true"],
        ],
    ),
    "tp2-pp2-dp2": (
        8,
        [
            ["parallel.tensor=2", "parallel.pipeline=2", "parallel.distributed_optimizer=false"],
            ["parallel.tensor=2", "parallel.pipeline=2", "parallel.distributed_optimizer=true"],
            ["parallel.tensor=2", "parallel.pipeline=2", "parallel.virtual_pipeline=2",
             "parallel.sequence_parallel=true", "parallel.distributed_optimizer=true"],
        ],
    ),
}


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    torchrun(1, WORKER, str(out / "ref.json"), str(out), "[]", json.dumps([Z_LOSS]))
    return json.loads((out / "ref.json").read_text())


@pytest.fixture(scope="module")
def reference(references):
    return references["single"]


@pytest.mark.parametrize("launch", list(LAUNCHES))
def test_layouts_match_single_process(launch, references, reference, tmp_path):
    nproc, layouts = LAUNCHES[launch]
    torchrun(nproc, WORKER, str(tmp_path / "out.json"), str(tmp_path), *[json.dumps(layout) for layout in layouts])
    results = json.loads((tmp_path / "out.json").read_text())
    assert len(results) == len(layouts)
    assert len(reference["loss"]) == 5
    for name, got in results.items():
        label = f"{name or 'DP only'} on {nproc} processes"
        want = references[Z_LOSS] if Z_LOSS in name else reference
        assert got["loss"] == pytest.approx(want["loss"], rel=RTOL), f"loss differs for {label}"
        assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=RTOL), f"grad norm differs for {label}"
        assert got["z_loss"] == pytest.approx(want["z_loss"], rel=RTOL), f"z-loss differs for {label}"
    # The run must actually train: the loss falls over the 5 steps.
    assert reference["loss"][-1] < reference["loss"][0] - 0.05


def test_z_loss_is_on_logged_and_moves_the_loss(references, reference) -> None:
    """The z-loss reference differs from the plain one (else the TP=2 z-loss comparison proves nothing): its
    logged per-token z-loss is what it adds to the loss at the first step (same weights, same batch)."""
    with_z = references[Z_LOSS]
    assert reference["z_loss"] == [] and len(with_z["z_loss"]) == 5
    added = with_z["loss"][0] - reference["loss"][0]
    assert added == pytest.approx(with_z["z_loss"][0], rel=2e-5) and added > 1000 * RTOL * reference["loss"][0]


@pytest.mark.parametrize(
    "variant",
    [
        # One key/value head shared by both TP ranks (megatron-core gathers it), as with Qwen2-0.5B at TP=4.
        ["model.num_query_groups=1"],
        # A vocabulary padded differently by TP (300 -> 384 rows at TP=1, 512 at TP=2): the padding is
        # masked out of the softmax, so it does not change the loss.
        ["model.vocab_size=300"],
    ],
    ids=["fewer-query-groups-than-tp", "tp-dependent-vocab-padding"],
)
def test_model_variants_at_tp2_match_single_process(tmp_path, variant):
    torchrun(1, WORKER, str(tmp_path / "ref.json"), str(tmp_path / "ref"), json.dumps(variant))
    reference = json.loads((tmp_path / "ref.json").read_text())[" ".join(variant)]
    layouts = [variant + ["parallel.tensor=2"], variant + ["parallel.tensor=2", "parallel.sequence_parallel=true"]]
    torchrun(2, WORKER, str(tmp_path / "out.json"), str(tmp_path / "tp"), *[json.dumps(layout) for layout in layouts])
    results = json.loads((tmp_path / "out.json").read_text())
    assert len(results) == 2
    for name, got in results.items():
        assert got["loss"] == pytest.approx(reference["loss"], rel=RTOL), name
        assert got["grad_norm"] == pytest.approx(reference["grad_norm"], rel=RTOL), name
