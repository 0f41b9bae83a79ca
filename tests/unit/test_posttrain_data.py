"""Chat rendering and masks, bad-data reports, packing, the DPO loss, multiple-choice encoding and sampling."""

from __future__ import annotations

import json
import math

import pytest
import torch

from megatron_llm.data.tokenizers.tokenizer import load_tokenizer
from megatron_llm.errors import UsageError
from megatron_llm.evaluation import multiple_choice
from megatron_llm.evaluation.generate_command import next_token
from megatron_llm.posttrain import synthetic
from megatron_llm.posttrain.chat import DEFAULT_CHAT_TEMPLATE, ChatTemplate, encode_chat, encode_prompt
from megatron_llm.posttrain.dpo_data import PairSequences, load_pairs
from megatron_llm.posttrain.dpo_loss import dpo_loss
from megatron_llm.posttrain.packing import SFTDataset, first_fit
from megatron_llm.posttrain.sft_data import load_conversations

TEMPLATE = ChatTemplate(DEFAULT_CHAT_TEMPLATE)
# A template in the style of open chat models: special-looking markers, a system turn, an end-of-turn marker.
IM_TEMPLATE = ChatTemplate(
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    items = synthetic.tasks(200, 0)
    texts = [TEMPLATE.render(r["messages"]) for r in synthetic.chat_records(items)]
    texts += [IM_TEMPLATE.render(r["messages"]) for r in synthetic.chat_records(items[:50])]
    return synthetic.write_tokenizer(tmp_path_factory.mktemp("tok"), texts, vocab_size=300)


@pytest.fixture(scope="module")
def tok(tok_dir):
    return load_tokenizer(tok_dir)


def trained_text(tok, encoded) -> str:
    return tok.decode([i for i, t in zip(encoded.ids, encoded.trained) if t])


@pytest.mark.parametrize("template", [TEMPLATE, IM_TEMPLATE], ids=["default", "im"])
def test_only_assistant_turns_and_the_closing_eod_are_trained(tok, template):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "add these numbers: 2 + 3"},
                {"role": "assistant", "content": "5"}, {"role": "user", "content": "reverse this word: abc"},
                {"role": "assistant", "content": "cba"}]
    encoded = encode_chat(messages, template, tok)
    assert encoded.ids == tok.encode(template.render(messages)) + [tok.eod_id]
    end = "<|im_end|>\n" if template is IM_TEMPLATE else "\n"
    assert trained_text(tok, encoded) == f"5{end}cba{end}<|endoftext|>"
    # The generation prompt of the first turn is exactly the prefix the model sees before its answer.
    prompt = encode_prompt(messages[:2], template, tok)
    assert encoded.ids[:len(prompt)] == prompt and encoded.trained[len(prompt)] and not encoded.trained[len(prompt) - 1]
    last = encode_chat(messages, template, tok, last_only=True)
    assert trained_text(tok, last) == f"cba{end}<|endoftext|>"


def test_a_template_that_does_not_render_prefixes_is_refused(tok):
    reversed_order = ChatTemplate("{% for m in messages|reverse %}{{ m['content'] }};{% endfor %}")
    with pytest.raises(ValueError, match="prefixes"):
        encode_chat([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], reversed_order, tok)


def test_bad_conversations_are_reported_with_file_and_line_and_counted(tok, tmp_path):
    good = {"messages": [{"role": "user", "content": "add these numbers: 1 + 1"},
                         {"role": "assistant", "content": "2"}]}
    lines = [
        json.dumps(good),
        json.dumps({"messages": [{"content": "hi"}, {"role": "assistant", "content": "x"}]}),
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}),
        "{not json",
        json.dumps({"messages": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "x"}]}),
        json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),
        json.dumps(good),
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(lines) + "\n")
    conversations, report = load_conversations(path, TEMPLATE, tok, seq_length=64)
    assert len(conversations) == 2 and report.read == 7 and report.used == 2 and report.rejected == 5
    where = {line: reason for line, reason in report.problems}
    assert sorted(where) == [2, 3, 4, 5, 6]
    assert "no 'role'" in where[2] and "empty assistant" in where[3] and "invalid JSON" in where[4]
    assert "longer than data.seq_length+1 = 65" in where[5] and "no assistant turn" in where[6]
    assert report.reasons["missing role"] == 1 and report.reasons["longer than the context"] == 1
    assert report.lines()[0].startswith(f"{path}:2: ")
    assert "2 of 7 records used, 5 rejected" in report.summary()
    with pytest.raises(UsageError, match=f"{path}:2: message 0 has no 'role'"):
        load_conversations(path, TEMPLATE, tok, seq_length=64, strict=True)


def test_bad_preference_pairs_are_reported(tok, tmp_path):
    records = [
        {"prompt": "add these numbers: 1 + 2", "chosen": "3", "rejected": "4"},
        {"prompt": "add these numbers: 1 + 2", "chosen": "3", "rejected": "3"},
        {"prompt": "add these numbers: 1 + 2", "chosen": "", "rejected": "4"},
        {"prompt": "add these numbers: 1 + 2", "chosen": "3"},
        {"prompt": [{"role": "user", "content": "reverse this word: abc"}],
         "chosen": [{"role": "user", "content": "reverse this word: abc"}, {"role": "assistant", "content": "cba"}],
         "rejected": [{"role": "assistant", "content": "abc"}]},
    ]
    path = synthetic.write_jsonl(tmp_path / "prefs.jsonl", records)
    pairs, report = load_pairs(path, TEMPLATE, tok, seq_length=64)
    assert len(pairs) == 2 and report.rejected == 3
    reasons = dict(report.problems)
    assert "identical" in reasons[2] and "empty assistant" in reasons[3] and "missing 'rejected'" in reasons[4]
    assert report.reasons["chosen equals rejected"] == 1
    sequences = PairSequences(pairs, 64, tok.pad_id)
    assert len(sequences) == 4
    chosen, rejected = sequences[2], sequences[3]
    assert tok.decode(chosen["labels"][chosen["loss_mask"] > 0].tolist()) == "cba\n<|endoftext|>"
    assert tok.decode(rejected["labels"][rejected["loss_mask"] > 0].tolist()) == "abc\n<|endoftext|>"


def test_first_fit_keeps_order_and_capacity():
    assert first_fit([5, 4, 3, 2, 6, 1], 8) == [[0, 2], [1, 3, 5], [4]]
    with pytest.raises(ValueError):
        first_fit([9], 8)


def test_packed_sample_layout(tok):
    convs = [encode_chat(r["messages"], TEMPLATE, tok) for r in synthetic.chat_records(synthetic.tasks(6, 1))]
    packed = SFTDataset(convs, 64, tok.pad_id, packing=True)
    padded = SFTDataset(convs, 64, tok.pad_id, packing=False)
    assert len(padded) == 6 and len(packed) < 6
    assert sum(len(s) for s in packed.samples) == 6
    sample = packed[0]
    mask = sample["attention_mask"][0]
    n0 = len(convs[packed.samples[0][0]]) - 1
    n1 = len(convs[packed.samples[0][1]]) - 1
    # The second conversation starts at position 0 and cannot see the first; both are causal.
    assert sample["position_ids"][n0] == 0 and sample["position_ids"][n0 + n1 - 1] == n1 - 1
    assert mask[n0, :n0].all() and not mask[n0, n0] and mask[n0, n0 + 1]
    assert not mask[n0 - 1, :n0].any() and mask[0, 1]
    # Tokens, labels and loss mask of each conversation are those of its padded sample.
    first = padded[packed.samples[0][1]]
    for key in ("tokens", "labels", "loss_mask"):
        assert torch.equal(sample[key][n0:n0 + n1], first[key][:n1])
    used = sum(len(convs[i]) - 1 for i in packed.samples[0])
    assert sample["loss_mask"][used:].sum() == 0 and "attention_mask" not in first
    assert mask[used:, :used].all() and not mask[used:].diagonal()[used:].any()
    assert first["loss_mask"].sum() == sum(convs[packed.samples[0][1]].trained[1:])


def test_dpo_loss_values():
    policy_c, policy_r = torch.tensor([-3.0, -1.0]), torch.tensor([-4.0, -1.0])
    ref_c, ref_r = torch.tensor([-3.0, -2.0]), torch.tensor([-4.0, -0.5])
    losses, chosen, rejected = dpo_loss(policy_c, policy_r, ref_c, ref_r, beta=0.5)
    assert losses[0].item() == pytest.approx(math.log(2))
    margin = 0.5 * ((-1.0 + 2.0) - (-1.0 + 0.5))
    assert losses[1].item() == pytest.approx(math.log1p(math.exp(-margin)))
    assert chosen.tolist() == pytest.approx([0.0, 0.5]) and rejected.tolist() == pytest.approx([0.0, -0.25])


def test_multiple_choice_encoding_and_scores(tok, tmp_path):
    ctx, cont = multiple_choice.encode_pair(tok, "add these numbers: 2 + 3 =", " 5")
    assert tok.decode(ctx + cont) == "add these numbers: 2 + 3 = 5" and tok.decode(cont).strip() == "5"
    ctx2, cont2 = multiple_choice.encode_pair(tok, "add these numbers: 2 + 3 = ", "5")
    assert ctx2 + cont2 == ctx + cont and cont2 == cont
    path = synthetic.write_jsonl(tmp_path / "task.jsonl", [
        {"context": "q1", "choices": ["a", "bbbb"], "answer": 1},
        {"question": "q2", "choices": ["a", "b", "c"], "answer": 0},
        {"context": "q3", "choices": ["a"], "answer": 0},
        {"context": "q4", "choices": ["a", "b"], "answer": 2},
    ])
    questions, report = multiple_choice.load_task(path)
    assert [q.line for q in questions] == [1, 2] and [line for line, _ in report.problems] == [3, 4]
    result = multiple_choice.summarize(questions, [-2.0, -3.0, -1.0, -2.0, -3.0], "task", details=True)
    # Question 1: sum picks "a" (wrong), per character picks "bbbb" (right). Question 2: "a" (right).
    assert result["acc"] == 0.5 and result["acc_norm"] == 1.0
    assert result["chance"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert [item["pred"] for item in result["items"]] == [0, 0]


def test_sampling_follows_temperature_and_top_p():
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0])
    gen = torch.Generator().manual_seed(0)
    assert next_token(logits, 0.0, 1.0, gen) == 0
    draws = [next_token(logits, 1.0, 0.7, gen) for _ in range(200)]
    assert set(draws) == {0, 1}  # p = 0.61, 0.22, ...: the nucleus of mass 0.7 holds the two most likely tokens
    draws = [next_token(logits, 1.0, 1.0, gen) for _ in range(2000)]
    expected = torch.softmax(logits, 0)[3].item()
    assert abs(draws.count(3) / 2000 - expected) < 0.02


@pytest.mark.parametrize("command, what", [("sft", "conversation"), ("dpo", "preference pair")])
def test_no_usable_record_is_a_usage_error_with_a_data_report(tmp_path, capsys, tok_dir, command, what):
    from megatron_llm import cli

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": "not a list"}\n{"prompt": 3}\n')
    args = [command, "--config", "examples/configs/sft-tiny.yaml", "--set", f"data.tokenizer={tok_dir}",
            "--data", str(bad), "--run-dir", str(tmp_path / "run")]
    if command == "dpo":
        args += ["--ref", str(tmp_path / "unused")]
    assert cli.main(args) == 2
    assert f"{bad}: no usable {what}" in capsys.readouterr().err
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert [(entry["read"], entry["used"], entry["rejected"]) for entry in report] == [(2, 0, 2)]


def test_without_train_iters_the_run_lasts_the_requested_epochs(tmp_path, tok_dir):
    from megatron_llm.posttrain import run
    from megatron_llm.posttrain import sft_command as sft

    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in synthetic.chat_records(synthetic.tasks(120, 3))))
    args = sft.build_parser().parse_args(["--config", "examples/configs/sft-tiny.yaml", "--set",
                                          f"data.tokenizer={tok_dir}", "--data", str(data), "--epochs", "2",
                                          "--run-dir", str(tmp_path / "run")])
    config = run.resolve_config(args)
    assert config.schedule.train_iters is None
    prepared = run.prepare_data(args, config, sft.build_sft_datasets, "conversation")
    gbs = config.schedule.global_batch_size
    assert config.schedule.train_iters == math.ceil(2 * len(prepared.train) / gbs) > config.optim.warmup_iters
