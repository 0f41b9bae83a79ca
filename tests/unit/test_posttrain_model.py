"""SFT loss masking and packing, sequence scoring and the DPO step, on a real tiny GPTModel (one process)."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from megatron_llm.data.tokenizers.tokenizer import load_tokenizer
from megatron_llm.posttrain import synthetic
from megatron_llm.posttrain.chat import DEFAULT_CHAT_TEMPLATE, ChatTemplate, encode_chat, encode_prompt
from megatron_llm.posttrain.packing import SFTDataset

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ChatTemplate(DEFAULT_CHAT_TEMPLATE)
SEQ = 64


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from megatron_llm.config.loader import load_config
    from megatron_llm.model.builder import build_model_chunks
    from megatron_llm.runtime.distributed import destroy_distributed, init_distributed, set_seeds
    from megatron_llm.runtime.hardware import detect_platform

    items = synthetic.tasks(40, 3)
    records = synthetic.chat_records(items)
    tok = load_tokenizer(synthetic.write_tokenizer(tmp_path_factory.mktemp("tok"),
                                                   [TEMPLATE.render(r["messages"]) for r in records], 300))
    saved = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT")}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    config = load_config(ROOT / "examples/configs/tiny.yaml", [f"data.seq_length={SEQ}"])
    init_distributed(config.parallel)
    set_seeds(config.schedule.seed)
    model = build_model_chunks(config, 512, detect_platform())[0]
    model.eval()
    yield {"tok": tok, "records": records, "model": model}
    destroy_distributed()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _answer_nll(model, ids: list[int], prompt_len: int) -> float:
    """-sum log p of the tokens after the prompt, from the model's logits on this conversation alone."""
    tokens = torch.tensor([ids[:-1]])
    with torch.no_grad():
        logits = model(tokens, torch.arange(len(ids) - 1)[None], None)
    logp = torch.log_softmax(logits[0].double(), dim=-1)
    targets = torch.tensor(ids[1:])
    picked = logp[torch.arange(len(targets)), targets]
    return float(-picked[prompt_len - 1:].sum())


def _per_token_loss(model, sample: dict) -> torch.Tensor:
    with torch.no_grad():
        mask = sample.get("attention_mask")
        return model(sample["tokens"][None], sample["position_ids"][None], None if mask is None else mask[None],
                     labels=sample["labels"][None])[0].double()


def test_sft_loss_is_over_assistant_tokens_and_packing_matches_padding(env):
    from megatron_llm.training.forward import token_loss

    tok, model = env["tok"], env["model"]
    records = env["records"][:8]
    convs = [encode_chat(r["messages"], TEMPLATE, tok) for r in records]
    prompts = [len(encode_prompt(r["messages"][:1], TEMPLATE, tok)) for r in records]
    hand = [_answer_nll(model, c.ids, p) for c, p in zip(convs, prompts)]
    hand_tokens = sum(len(c) - p for c, p in zip(convs, prompts))

    packed = SFTDataset(convs, SEQ, tok.pad_id, packing=True)
    padded = SFTDataset(convs, SEQ, tok.pad_id, packing=False)
    assert len(packed) < len(padded)
    loss_sum, tokens = 0.0, 0
    per_conv_packed = {}
    for index in range(len(packed)):
        sample = packed[index]
        losses = _per_token_loss(model, sample)
        total, count, _ = token_loss(sample["loss_mask"][None], losses)  # the training loop's loss function
        loss_sum += float(total)
        tokens += int(count)
        start = 0
        for conv in packed.samples[index]:
            n = len(convs[conv]) - 1
            per_conv_packed[conv] = float((losses[start:start + n] * sample["loss_mask"][start:start + n]).sum())
            start += n
    assert tokens == hand_tokens
    assert loss_sum == pytest.approx(sum(hand), rel=1e-5)
    for conv in range(len(convs)):
        sample = padded[conv]
        alone = float((_per_token_loss(model, sample) * sample["loss_mask"]).sum())
        assert per_conv_packed[conv] == pytest.approx(alone, rel=1e-5)
        assert alone == pytest.approx(hand[conv], rel=1e-5)


def test_scoring_through_the_schedule_matches_the_logits(env):
    from megatron_llm.evaluation.scoring import pad_sequence, score_samples

    tok, model = env["tok"], env["model"]
    convs = [encode_chat(r["messages"], TEMPLATE, tok) for r in env["records"][8:13]]
    samples = [pad_sequence(c.ids, c.trained, SEQ, tok.pad_id) for c in convs]
    scored = score_samples([model], samples, SEQ, micro_batch_size=2)
    for k, conv in enumerate(convs):
        first = conv.trained.index(True)
        assert -float(scored.logprob[k]) == pytest.approx(_answer_nll(model, conv.ids, first), rel=1e-5)
        assert scored.num_tokens[k] == sum(conv.trained)


def test_dpo_step_loss_is_log2_when_policy_is_the_reference(env):
    from megatron_llm.posttrain.dpo_data import PairSequences
    from megatron_llm.posttrain.dpo_loss import reference_logprobs
    from megatron_llm.posttrain.dpo_task import DPOTask
    from megatron_llm.posttrain.run import PreparedData
    from megatron_llm.training.metrics import MetricBuffer

    tok, model = env["tok"], env["model"]
    pairs = []
    for q, a, wrong in synthetic.tasks(4, 9):
        chosen = encode_chat([{"role": "user", "content": q}, {"role": "assistant", "content": a}], TEMPLATE, tok)
        rejected = encode_chat([{"role": "user", "content": q}, {"role": "assistant", "content": wrong[0]}],
                               TEMPLATE, tok)
        pairs.append((chosen, rejected))
    data = PairSequences(pairs, SEQ, tok.pad_id)
    reference = reference_logprobs([model], data, SEQ, micro_batch_size=2)
    task = DPOTask(PreparedData(data, None, [], False), beta=0.1, reference=Path("ref"), init=Path("ref"))
    task.reference = reference
    metrics = MetricBuffer()
    task.trainer = SimpleNamespace(record_metric=metrics.record)
    batch = {k: torch.stack([data[i][k] for i in range(4)]) for k in data[0]}
    output, loss_func = task.forward_step(iter([batch]), model)
    loss_sum, pairs_count, report = loss_func(output)
    assert int(pairs_count) == 2
    assert float(loss_sum) / 2 == pytest.approx(math.log(2), abs=1e-6)
    stats = metrics.reduce()
    assert stats["reward_accuracy"] == 0.0 and abs(stats["reward_margin"]) < 1e-6


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_generation_with_the_kv_cache_equals_recomputing_the_sequence(env, temperature):
    """Through megatron-core's static KV cache, and on past the window where the cache gives way to a
    sliding window, generation picks the tokens the uncached loop picks. A model left in training mode is
    switched to eval mode for generation and back afterwards."""
    from megatron_llm.evaluation.generate_command import generate_ids

    model, prompt = env["model"], list(range(40, 52))
    args = (model, prompt, 30, 512, 24, set(), temperature, 1.0, 7)
    model.train()
    try:
        cached = generate_ids(*args, kv_cache=True)
        assert model.training
        assert len(cached) == 30
        assert cached == generate_ids(*args, kv_cache=False)
    finally:
        model.eval()
