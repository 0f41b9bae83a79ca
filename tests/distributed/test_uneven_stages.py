"""Uneven pipeline stages: 6 layers over PP=4 with 2 virtual stages, the embedding and the loss each counted as
a layer (8 = 4 x 2 slots, so the very first and the very last model chunk hold no transformer layer).

Against one process training the same model: the losses and gradient norms of 6 steps agree, a checkpoint
saved under the uneven split resumes in an even layout and an even one resumes under the uneven split, and
`convert to-hf` of the uneven run's checkpoint gives a transformers model with the one-process export's
weights and logits. Two launches: one process (the reference), then four processes running four jobs.
"""

from __future__ import annotations

import json

import pytest
import torch

from megatron_llm.training.checkpoint.format import iter_dir
from tests.distributed.conftest import torchrun

WORKER = "tests/distributed/uneven_worker.py"
RTOL = 1e-5
MODEL = ["model.num_layers=6", "schedule.train_iters=6", "optim.warmup_iters=2"]
SAVE = ["checkpoint.save_interval=3"]
NO_SAVE = ["checkpoint.save_interval=null"]
UNEVEN = ["parallel.pipeline=4", "parallel.virtual_pipeline=2", "parallel.account_for_embedding=true",
          "parallel.account_for_loss=true"]
EVEN = ["parallel.pipeline=2"]  # 3 layers per stage, data parallel 2 on four processes
# Logits of the two exports after 6 AdamW steps: the runs' weights differ by float rounding (~1e-6).
LOGIT_ATOL = 1e-4


def _job(name: str, root, sets: list[str], resume_from=None, **flags) -> str:
    return json.dumps({"name": name, "run_dir": str(root / name), "sets": sets,
                       "resume_from": str(resume_from) if resume_from else None, **flags})


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("uneven")
    torchrun(1, WORKER, str(root / "single.json"), _job("single", root, MODEL + SAVE))
    jobs = [
        _job("uneven", root, MODEL + SAVE + UNEVEN),
        _job("even_to_uneven", root, MODEL + NO_SAVE + UNEVEN,
             resume_from=iter_dir(root / "single" / "checkpoints", 3)),
        _job("uneven_to_even", root, MODEL + NO_SAVE + EVEN,
             resume_from=iter_dir(root / "uneven" / "checkpoints", 3)),
        # Negative control: the uneven layout with the output layer drawn unseeded (the bug fixed in
        # model/builder.py); one step is enough, its loss is computed before any update.
        _job("control", root, MODEL + NO_SAVE + UNEVEN + ["schedule.train_iters=1", "optim.warmup_iters=0"],
             unseeded_output_layer=True),
    ]
    torchrun(4, WORKER, str(root / "four.json"), *jobs)
    results = {**json.loads((root / "single.json").read_text()), **json.loads((root / "four.json").read_text())}
    return {"root": root, **results}


def test_uneven_split_trains_like_one_process(runs):
    single, uneven = runs["single"], runs["uneven"]
    assert single["step"] == uneven["step"] == [1, 2, 3, 4, 5, 6]
    assert uneven["loss"] == pytest.approx(single["loss"], rel=RTOL)
    assert uneven["grad_norm"] == pytest.approx(single["grad_norm"], rel=RTOL)
    assert single["loss"][-1] < single["loss"][0] - 0.05, "the run must actually train"
    # Negative control: an output layer initialised differently on the loss-only chunk shows at step 1
    # (measured: loss 1.4e-3 and gradient norm 3.5e-2 relative off).
    control = runs["control"]
    for key in ("loss", "grad_norm"):
        assert abs(control[key][0] - single[key][0]) > 100 * RTOL * single[key][0], (key, control, single)


@pytest.mark.parametrize("name, straight", [("even_to_uneven", "single"), ("uneven_to_even", "uneven")])
def test_checkpoints_reshard_between_even_and_uneven_splits(runs, name, straight):
    got, reference = runs[name], runs[straight]
    assert got["step"] == [4, 5, 6]
    assert got["loss"] == pytest.approx(reference["loss"][3:], rel=RTOL)
    assert got["grad_norm"] == pytest.approx(reference["grad_norm"][3:], rel=RTOL)
    # Negative control: a resume that lost or repeated a step would be off by far more than the tolerance.
    shifted = reference["loss"][2:5]
    assert min(abs(a - b) / b for a, b in zip(got["loss"], shifted)) > 100 * RTOL


@pytest.fixture(scope="module")
def exported(runs) -> dict:
    from megatron_llm.convert.to_hf import export_to_hf

    out = {}
    for name in ("single", "uneven"):
        out[name] = runs["root"] / f"hf_{name}"
        export_to_hf(iter_dir(runs["root"] / name / "checkpoints", 6), out[name], progress=False)
    return out


def _hf_model(directory):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


def test_hf_export_of_uneven_checkpoint_matches_one_process(exported):
    single, uneven = _hf_model(exported["single"]), _hf_model(exported["uneven"])
    assert single.config.num_hidden_layers == uneven.config.num_hidden_layers == 6
    a, b = single.state_dict(), uneven.state_dict()
    assert sorted(a) == sorted(b)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, worst
    tokens = torch.randint(0, single.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = single(tokens).logits
        got = uneven(tokens).logits
        assert (got - expected).abs().max().item() <= LOGIT_ATOL
        # Negative control: layers 2 and 3 sit on different pipeline ranks and virtual stages under the
        # uneven split; an export that put them in each other's place is caught far beyond the tolerance.
        layers = uneven.model.layers
        layers[2], layers[3] = layers[3], layers[2]
        swapped = uneven(tokens).logits
    assert (swapped - expected).abs().max().item() > 100 * LOGIT_ATOL
