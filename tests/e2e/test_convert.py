"""`convert to-hf` / `from-hf` end to end: trained checkpoints of several layouts exported and loaded by
transformers offline give the engine's own logits and greedy tokens; HF -> megatron-llm -> HF is bit-exact.

One torchrun launch trains three layouts; one process runs the engine's forward for every checkpoint.
"""

import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT),
       "PYTHONWARNINGS": "ignore"}
WORKER = Path(__file__).with_name("convert_worker.py")
CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
TOL = 1e-4


def run(args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


def convert(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "megatron_llm", "convert", *args], check)


def stdlib_texts() -> list[str]:
    import argparse
    import collections
    import functools
    import json as json_module
    import pathlib
    import textwrap

    modules = [argparse, collections, functools, json_module, pathlib, textwrap, inspect, subprocess]
    texts = [inspect.getdoc(m) for m in modules]
    texts += [inspect.getdoc(obj) or "" for m in modules for _, obj in inspect.getmembers(m) if callable(obj)]
    return [t for t in texts if t]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("convert")


@pytest.fixture(scope="module")
def tokenizer_dir(work) -> Path:
    """A byte-level BPE tokenizer in megatron-llm's tokenizer directory format, trained on stdlib docstrings."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(stdlib_texts(), trainer)
    directory = work / "tokenizer"
    directory.mkdir()
    tok.save(str(directory / "tokenizer.json"))
    manifest = {"kind": "hf", "vocab_size": tok.get_vocab_size(), "eod_id": tok.token_to_id("</s>"),
                "bos_id": tok.token_to_id("<s>"), "pad_id": None, "unk_id": None,
                "special_tokens": ["<s>", "</s>"], "chat_template": CHAT_TEMPLATE}
    (directory / "megatron_llm_tokenizer.json").write_text(json.dumps(manifest))
    return directory


def layouts(tokenizer: Path) -> dict[str, list[str]]:
    # PP=2 with 2 virtual stages: the interleaved schedule, the hardest case for merging pipeline shards.
    tp2pp2 = ["parallel.tensor=2", "parallel.pipeline=2", "parallel.virtual_pipeline=2"]
    return {
        # padded vocabulary (400 -> 512), non-default rope theta with llama3 scaling, untied output layer
        "untied_llama3": tp2pp2 + ["model.vocab_size=null", f"data.tokenizer={tokenizer}",
                                   "model.rotary_base=50000", "model.rope_scaling=llama3",
                                   "model.rope_scaling_factor=4.0", "model.norm_epsilon=1e-6"],
        # tied embeddings across pipeline stages (and virtual stages), q/k/v bias, head_dim != hidden / heads
        "tied_vpp_bias": tp2pp2 + ["model.tie_embeddings=true",
                                   "model.add_qkv_bias=true", "model.kv_channels=24", "model.vocab_size=500"],
        # one query group on two TP ranks (and DP=2): megatron-core replicates the key/value head on both ranks
        "groups_below_tp": ["parallel.tensor=2", "model.num_query_groups=1"],
        # QK-norm (trained, so the norm weights are no longer all ones) exports as Qwen3
        "qk_norm": ["parallel.tensor=2", "model.qk_norm=true"],
    }


@pytest.fixture(scope="module")
def trained(work, tokenizer_dir) -> dict[str, Path]:
    plan = layouts(tokenizer_dir)
    run([str(BIN / "torchrun"), "--nproc-per-node", "4", str(WORKER), "train", str(work / "runs"), json.dumps(plan)])
    return {name: work / "runs" / name / "checkpoints" for name in plan}


def _tiny_hf(kind: str):
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    common = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=24, vocab_size=500, max_position_embeddings=256, rms_norm_eps=1e-6)
    torch.manual_seed(7)
    if kind == "llama":
        rope = {"rope_type": "llama3", "rope_theta": 50000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
        model = LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=True, rope_parameters=rope))
    elif kind == "qwen2":
        rope = {"rope_type": "default", "rope_theta": 20000.0}
        model = Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=False, rope_parameters=rope))
    else:
        rope = {"rope_type": "default", "rope_theta": 20000.0}
        model = Qwen3ForCausalLM(Qwen3Config(**common, tie_word_embeddings=False, rope_parameters=rope))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    return model


@pytest.fixture(scope="module")
def hf_models(work) -> dict[str, Path]:
    paths = {}
    for kind in ("llama", "qwen2", "qwen3"):
        paths[kind] = work / f"hf_{kind}"
        _tiny_hf(kind).save_pretrained(paths[kind], max_shard_size="200KB")
    return paths


@pytest.fixture(scope="module")
def imported(work, hf_models) -> dict[str, Path]:
    convert("from-hf", "--hf", str(hf_models["llama"]), "--output", str(work / "mg_llama"),
            "--tensor-parallel", "2", "--pipeline-parallel", "2", "--config-out", str(work / "llama.yaml"))
    convert("from-hf", "--hf", str(hf_models["qwen2"]), "--output", str(work / "mg_qwen2"))
    convert("from-hf", "--hf", str(hf_models["qwen3"]), "--output", str(work / "mg_qwen3"))
    return {"llama": work / "mg_llama", "qwen2": work / "mg_qwen2", "qwen3": work / "mg_qwen3"}


@pytest.fixture(scope="module")
def exported(work, trained, imported) -> dict[str, Path]:
    from megatron_llm.convert.to_hf import export_to_hf

    out = {}
    for index, (name, checkpoint) in enumerate({**trained, **imported}.items()):
        out[name] = work / f"hf_out_{name}"
        if index == 0:
            result = convert("to-hf", "--checkpoint", str(checkpoint), "--output", str(out[name]), "--dtype", "fp32")
            assert "tokenizer from" in result.stdout
        else:
            export_to_hf(checkpoint, out[name], progress=False, max_shard_bytes=300_000)
    return out


@pytest.fixture(scope="module")
def text_ids(tokenizer_dir) -> list[int]:
    from megatron_llm.data.tokenizers.tokenizer import load_tokenizer

    return load_tokenizer(tokenizer_dir).encode(inspect.getdoc(json))[:48]


@pytest.fixture(scope="module")
def engine(work, trained, imported, text_ids) -> dict[str, dict]:
    ids_file = work / "ids.json"
    ids_file.write_text(json.dumps(text_ids))
    checkpoints = {**trained, "llama": imported["llama"]}
    run([sys.executable, str(WORKER), "forward", str(work / "engine.pt"), str(ids_file)]
        + [str(p) for p in checkpoints.values()])
    results = torch.load(work / "engine.pt")
    return {name: results[str(path)] for name, path in checkpoints.items()}


def hf_forward(directory: Path, ids: list[int]) -> tuple[torch.Tensor, list[int]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    tokens = torch.tensor([ids])
    with torch.no_grad():
        logits = model(tokens).logits[0].float()
        generated = model.generate(tokens, max_new_tokens=8, do_sample=False, attention_mask=torch.ones_like(tokens))
    return logits, generated[0, len(ids):].tolist()


def assert_same_generation(hf_tokens: list[int], engine_tokens: list[int], eos: int | None) -> None:
    """HF stops at EOS; the engine's loop does not: the tokens must agree up to where HF stopped."""
    assert hf_tokens == engine_tokens[:len(hf_tokens)]
    assert len(hf_tokens) == len(engine_tokens) or hf_tokens[-1] == eos


@pytest.mark.parametrize("name", ["untied_llama3", "tied_vpp_bias", "groups_below_tp", "qk_norm"])
def test_exported_model_matches_engine_logits_and_greedy_tokens(name, exported, engine, text_ids):
    config = json.loads((exported[name] / "config.json").read_text())
    logits, tokens = hf_forward(exported[name], text_ids)
    expected = engine[name]["logits"]
    assert logits.shape == expected.shape
    assert (logits - expected).abs().max().item() <= TOL
    assert_same_generation(tokens, engine[name]["generated"], config.get("eos_token_id"))
    assert json.loads((exported[name] / "model.safetensors.index.json").read_text())["weight_map"]


def test_exported_config_keeps_rope_vocab_and_tying(exported, trained):
    untied = json.loads((exported["untied_llama3"] / "config.json").read_text())
    assert untied["vocab_size"] == 400 and untied["rope_parameters"]["rope_type"] == "llama3"
    assert untied["rope_parameters"]["rope_theta"] == 50000 and untied["rope_parameters"]["factor"] == 4.0
    assert untied["rms_norm_eps"] == 1e-6 and untied["tie_word_embeddings"] is False
    tied = json.loads((exported["tied_vpp_bias"] / "config.json").read_text())
    assert tied["tie_word_embeddings"] is True and tied["model_type"] == "qwen2" and tied["head_dim"] == 24
    assert len(json.loads((exported["tied_vpp_bias"] / "model.safetensors.index.json").read_text())
               ["weight_map"]) == 1 + 4 * 12 + 1
    metadata = json.loads(next(trained["untied_llama3"].glob("iter_*/megatron_llm.json")).read_text())
    assert "optimizer" in metadata["contents"]
    qk = json.loads((exported["qk_norm"] / "config.json").read_text())
    assert qk["model_type"] == "qwen3" and qk["architectures"] == ["Qwen3ForCausalLM"]


def test_exported_tokenizer_gives_the_training_ids(exported, tokenizer_dir):
    from transformers import AutoTokenizer

    from megatron_llm.data.tokenizers.tokenizer import load_tokenizer

    ours = load_tokenizer(tokenizer_dir)
    theirs = AutoTokenizer.from_pretrained(exported["untied_llama3"])
    for text in stdlib_texts()[:40] + ["<s>hello</s> wörld ✓"]:
        assert theirs(text, add_special_tokens=True)["input_ids"] == ours.encode(text)
    assert theirs.chat_template == CHAT_TEMPLATE
    assert theirs.eos_token == "</s>"
    generation = json.loads((exported["untied_llama3"] / "generation_config.json").read_text())
    assert generation["eos_token_id"] == ours.eod_id


def test_export_without_tokenizer_writes_the_model_alone(exported):
    files = {p.name for p in exported["tied_vpp_bias"].iterdir()}
    assert "config.json" in files and not files & {"tokenizer.json", "tokenizer_config.json"}


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_hf_round_trip_is_bit_exact(kind, hf_models, exported):
    from safetensors import safe_open

    def tensors(directory: Path) -> dict[str, torch.Tensor]:
        out = {}
        for file in directory.glob("*.safetensors"):
            with safe_open(file, "pt") as f:
                out.update({k: f.get_tensor(k) for k in f.keys()})
        return out

    original, back = tensors(hf_models[kind]), tensors(exported[kind])
    assert original.keys() == back.keys()
    for name, tensor in original.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name
    a = json.loads((hf_models[kind] / "config.json").read_text())
    b = json.loads((exported[kind] / "config.json").read_text())
    for field in ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "rms_norm_eps", "vocab_size", "tie_word_embeddings",
                  "rope_parameters", "max_position_embeddings"):
        assert a[field] == b[field], field


def test_imported_checkpoint_reproduces_hf_logits_and_config(imported, hf_models, engine, text_ids, work):
    from megatron_llm.config import load_config

    logits, tokens = hf_forward(hf_models["llama"], text_ids)
    assert (logits - engine["llama"]["logits"]).abs().max().item() <= TOL
    assert tokens == engine["llama"]["generated"][:len(tokens)]
    metadata = json.loads((imported["llama"] / "iter_0000000" / "megatron_llm.json").read_text())
    assert metadata["contents"] == ["model"] and metadata["step"] == 0
    assert metadata["layout"]["tensor"] == 2 and metadata["layout"]["pipeline"] == 2
    config = load_config(work / "llama.yaml")
    assert (config.model.tie_embeddings, config.model.rope_scaling, config.model.kv_channels) == (True, "llama3", 24)
    assert f"--resume-from {imported['llama']} --finetune" in (work / "llama.yaml").read_text()


def test_conversion_errors_exit_2_and_name_the_problem(work, hf_models, trained, exported):
    result = convert("from-hf", "--hf", str(hf_models["llama"]), "--output", str(work / "bad1"),
                     "--tensor-parallel", "3", check=False)
    assert result.returncode == 2 and "num_attention_heads=4 is not divisible by parallel.tensor=3" in result.stderr
    assert not (work / "bad1").exists()

    broken = work / "hf_broken"
    shutil.copytree(hf_models["qwen2"], broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "intermediate_size": 161}))
    result = convert("from-hf", "--hf", str(broken), "--output", str(work / "bad2"), check=False)
    assert result.returncode == 2 and "model.layers.0.mlp.gate_proj.weight: shape (160, 64)" in result.stderr
    (broken / "config.json").write_text(json.dumps({**config, "model_type": "gemma"}))
    result = convert("from-hf", "--hf", str(broken), "--output", str(work / "bad2"), check=False)
    assert result.returncode == 2 and "model_type='gemma'" in result.stderr

    result = convert("to-hf", "--checkpoint", str(trained["groups_below_tp"]), "--output",
                     str(exported["untied_llama3"]), check=False)
    assert result.returncode == 2 and "already exists and is not empty" in result.stderr

    damaged = work / "damaged"
    shutil.copytree(trained["groups_below_tp"], damaged)
    shard = sorted(damaged.glob("iter_*/__0_0.distcp"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    result = convert("to-hf", "--checkpoint", str(damaged), "--output", str(work / "bad3"), check=False)
    assert result.returncode == 2 and "__0_0.distcp: size 100 bytes" in result.stderr
    assert not (work / "bad3").exists() and not list(work.glob(".bad3*"))


def test_training_continues_from_the_imported_checkpoint_at_another_layout(imported, hf_models, work):
    result = run([sys.executable, "-m", "megatron_llm", "train", "--config", str(work / "llama.yaml"),
                  "--set", "parallel.tensor=1", "--set", "parallel.pipeline=1", "--set", "data.synthetic=true",
                  "--set", "schedule.train_iters=1", "--set", "schedule.global_batch_size=2",
                  "--set", "logging.tensorboard=false", "--set", "logging.progress=false",
                  "--resume-from", str(imported["llama"]), "--finetune", "--run-dir", str(work / "continued")])
    assert "loaded weights from" in result.stdout + result.stderr
    record = json.loads((work / "continued" / "metrics.jsonl").read_text().splitlines()[0])
    # The first step's loss is the imported weights' loss on the first global batch, which transformers
    # computes on the same samples. Freshly drawn weights also give about ln(500) = 6.2 (which is why a bound
    # like `loss < 7` proves nothing), but not the same value: the negative control.
    expected, fresh = _first_batch_losses(hf_models["llama"], work / "llama.yaml")
    assert record["step"] == 1 and record["loss"] == pytest.approx(expected, rel=2e-6)
    assert abs(fresh - expected) > 100 * 2e-6 * expected


def _first_batch_losses(hf_dir: Path, config_path: Path) -> tuple[float, float]:
    """(loss of the HF model, loss of the same architecture with fresh weights) on the continued run's first
    global batch: samples 0 and 1 of the synthetic stream, every token counted."""
    import transformers

    from megatron_llm.config import load_config
    from megatron_llm.training.data import SyntheticDataset

    config = load_config(config_path, ["data.synthetic=true"])
    data = SyntheticDataset(config.model.vocab_size, config.data.seq_length, config.schedule.seed, 0, 2)
    tokens = torch.stack([data[i]["tokens"] for i in range(2)])
    labels = torch.stack([data[i]["labels"] for i in range(2)])
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    torch.manual_seed(0)
    fresh = type(model)(model.config).float().eval()

    def loss(m) -> float:
        with torch.no_grad():
            logits = m(tokens).logits.double()
        return float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)))

    return loss(model), loss(fresh)
