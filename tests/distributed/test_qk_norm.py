"""`model.qk_norm`: RMSNorm on each head's queries and keys trains alike at TP=2 and DP=2 (megatron-core
sums the norm weights' gradients over the tensor-parallel heads), and it really acts on the model."""

import json

import pytest

from tests.distributed.conftest import torchrun

WORKER = "tests/distributed/layout_worker.py"


def test_qk_norm_is_layout_independent_and_changes_the_model(tmp_path):
    layouts = [["model.qk_norm=true"], ["model.qk_norm=true", "parallel.tensor=2"], ["parallel.tensor=2"]]
    torchrun(2, WORKER, str(tmp_path / "out.json"), str(tmp_path), *[json.dumps(layout) for layout in layouts])
    results = json.loads((tmp_path / "out.json").read_text())
    dp, tp, plain = (results[" ".join(layout)] for layout in layouts)
    for key in ("loss", "grad_norm"):
        assert tp[key] == pytest.approx(dp[key], rel=1e-5), key
    # Negative control: without the norms the same layout trains differently, far beyond the tolerance.
    assert max(abs(a - b) / abs(b) for a, b in zip(plain["grad_norm"], tp["grad_norm"])) > 100 * 1e-5
