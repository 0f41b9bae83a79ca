"""The planner against the real engine: per-rank parameter counts and static memory of multi-process
CPU runs (gloo) for TP/PP/DP layouts with and without the distributed optimizer, and the FLOPs the
trainer logs MFU with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_llm.config.loader import load_config
from megatron_llm.model.flops import flops_per_step
from megatron_llm.model.params import count_parameters, stage_parameters
from megatron_llm.planning.memory import static_memory
from tests.distributed.conftest import torchrun

WORLD = 4
WORKER = Path(__file__).with_name("plan_memory_worker.py")
# vocab 1100 is padded to 1152 at TP=1 and to 1280 at TP=2: padding is visible in every count
BASE = [
    "model.num_layers=4", "model.hidden_size=64", "model.ffn_hidden_size=176", "model.num_attention_heads=4",
    "model.num_query_groups=2", "model.vocab_size=1100", "model.max_position_embeddings=64",
    "data.seq_length=32", "data.synthetic=true", "schedule.train_iters=1", "schedule.global_batch_size=8",
    "schedule.micro_batch_size=1", "schedule.eval_iters=0", "optim.warmup_iters=0", "logging.tensorboard=false",
    "logging.progress=false",
]
LAYOUTS = [
    ["parallel.tensor=2", "parallel.pipeline=2", "parallel.virtual_pipeline=2", "parallel.distributed_optimizer=true"],
    ["parallel.tensor=2", "parallel.pipeline=2", "precision.dtype=bf16", "model.tie_embeddings=true"],
    ["parallel.pipeline=2", "precision.dtype=bf16", "model.tie_embeddings=true", "parallel.distributed_optimizer=true"],
    ["precision.dtype=bf16", "parallel.distributed_optimizer=true"],
    ["parallel.tensor=2"],
]
PARTS = ("weights", "gradients", "optimizer")


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict[int, list[dict]]:
    out = tmp_path_factory.mktemp("plan-memory")
    torchrun(WORLD, str(WORKER), str(out), *[json.dumps(BASE + layout) for layout in LAYOUTS])
    return {
        index: [json.loads((out / f"{index}-{rank}.json").read_text()) for rank in range(WORLD)]
        for index in range(len(LAYOUTS))
    }


@pytest.mark.parametrize("index", range(len(LAYOUTS)))
def test_static_memory_within_two_percent_per_rank(measured: dict, index: int) -> None:
    config = load_config(None, BASE + LAYOUTS[index])
    for record in measured[index]:
        predicted = static_memory(config, WORLD, record["pipeline_rank"], record["data_parallel_rank"])
        for part in PARTS:
            assert getattr(predicted, part) == pytest.approx(record[part], rel=0.02), (part, record)
        total = sum(record[part] for part in PARTS)
        assert predicted.weights + predicted.gradients + predicted.optimizer == pytest.approx(total, rel=0.02)


@pytest.mark.parametrize("index", range(len(LAYOUTS)))
def test_parameter_count_equals_the_built_model(measured: dict, index: int) -> None:
    config = load_config(None, BASE + LAYOUTS[index])
    p = config.parallel
    stages = stage_parameters(config.model, p.tensor, p.pipeline, p.virtual_pipeline)
    for record in measured[index]:
        assert record["numel"] == stages[record["pipeline_rank"]].numel
    if p.tensor == 1 and p.pipeline == 1:
        counts = count_parameters(config.model)
        assert measured[index][0]["numel"] == counts.built_total
        assert counts.built_total - counts.total == counts.vocab_padding == (1152 - 1100) * 64 * 2


@pytest.mark.parametrize("index", range(len(LAYOUTS)))
def test_trainer_logs_mfu_with_the_planner_flops(measured: dict, index: int) -> None:
    config = load_config(None, BASE + LAYOUTS[index])
    expected = flops_per_step(config.model, config.data.seq_length, config.schedule.global_batch_size,
                              tensor_parallel=config.parallel.tensor)
    assert {record["flops_per_step"] for record in measured[index]} == {expected}
