"""Conversion wiring, proven against transformers with weights that make every wiring error visible.

Random small weights (the usual std 0.02-0.05) leave attention nearly uniform and logits nearly flat, so a
converter that swaps heads, pairs the rotary dimensions wrongly or loses the RoPE scaling can still pass a
logits comparison. Here the Hugging Face models get norm weights around 1, query/key projections large enough
that attention scores spread over several nats, and an output layer whose logits spread over several nats;
logits are compared relative to their own scale (max |difference| / std of the reference logits).

Each model is imported with `convert from-hf`, run by the engine (megatron-core's GPTModel) and compared with
transformers' own forward; the Llama model is also exported back with `convert to-hf` and run by transformers.
For each wiring error a converter could make (swapped query heads, swapped key/value heads, interleaved instead
of half-split RoPE pairs, a wrong rope theta, llama3 scaling dropped, gate/up swapped, tied/untied confused)
the test builds the model that error would produce, in transformers, and shows its logits move by at least
100x the tolerance (the negative controls). Qwen2 (q/k/v biases) and Mistral are checked forward too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore",
       "PYTHONPATH": str(ROOT)}
TOL = 1e-5
SEQ = 200
VOCAB = 256
LLAMA3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=32, vocab_size=VOCAB, max_position_embeddings=8192, rms_norm_eps=1e-6)


def run(args: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}:\n{result.stdout[-2000:]}\n{result.stderr[-5000:]}")
    return result


def make_model(kind: str, config_overrides: dict | None = None, state: dict | None = None):
    """A transformers model of `kind` with the test's weights (or `state`)."""
    import transformers

    classes = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
               "mistral": ("MistralConfig", "MistralForCausalLM")}
    settings = {
        "llama": dict(tie_word_embeddings=False, rope_parameters=LLAMA3),
        "qwen2": dict(tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
        "mistral": dict(tie_word_embeddings=False, sliding_window=None,
                        rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
    }[kind]
    config_cls, model_cls = (getattr(transformers, name) for name in classes[kind])
    config = config_cls(**COMMON, **{**settings, **(config_overrides or {})})
    config._attn_implementation = "eager"  # the attention probabilities are inspected; same math as sdpa
    model = model_cls(config).float().eval()
    if state is not None:
        model.load_state_dict(state, strict=False)
        if model.config.tie_word_embeddings:
            model.tie_weights()
        return model
    generator = torch.Generator().manual_seed({"llama": 1, "qwen2": 2, "mistral": 3}[kind])
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                std, mean = 0.1, 1.0
            elif "embed_tokens" in name:
                std, mean = 1.0, 0.0
            elif "lm_head" in name:
                std, mean = 0.4, 0.0
            elif "q_proj" in name or "k_proj" in name:
                std, mean = (0.5, 0.0) if name.endswith("bias") else (0.25, 0.0)
            else:
                std, mean = 0.1, 0.0
            param.copy_(mean + std * torch.randn(param.shape, generator=generator))
    return model


def hf_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).abs().max() / expected.std())


def heads(weight: torch.Tensor, count: int) -> torch.Tensor:
    return weight.reshape(count, -1, *weight.shape[1:])


def swap_rows(state: dict, key: str, count: int, a: int, b: int) -> None:
    w = heads(state[key].clone(), count)
    w[[a, b]] = w[[b, a]]
    state[key] = w.reshape(state[key].shape)


def wired_wrongly(kind: str, model, error: str):
    """The model a converter with `error` would produce from `model`."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    layers = range(COMMON["num_hidden_layers"])
    q_heads, kv_heads = COMMON["num_attention_heads"], COMMON["num_key_value_heads"]
    overrides = {}
    for i in layers:
        attn, mlp = f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
        if error == "swapped query heads":  # heads 0 and 2 belong to different key/value groups
            swap_rows(state, f"{attn}.q_proj.weight", q_heads, 0, 2)
        elif error == "swapped key/value heads":
            for name in ("k_proj", "v_proj"):
                swap_rows(state, f"{attn}.{name}.weight", kv_heads, 0, 1)
        elif error == "interleaved rope pairing":
            dim = COMMON["head_dim"]
            order = torch.cat([torch.arange(0, dim, 2), torch.arange(1, dim, 2)])
            for name, count in (("q_proj", q_heads), ("k_proj", kv_heads)):
                w = heads(state[f"{attn}.{name}.weight"], count)[:, order]
                state[f"{attn}.{name}.weight"] = w.reshape(-1, w.shape[-1])
        elif error == "gate/up swapped":
            gate, up = state[f"{mlp}.gate_proj.weight"], state[f"{mlp}.up_proj.weight"]
            state[f"{mlp}.gate_proj.weight"], state[f"{mlp}.up_proj.weight"] = up, gate
    if error == "wrong rope theta":
        overrides["rope_parameters"] = {**model.config.rope_parameters, "rope_theta": 10000.0}
    elif error == "llama3 scaling dropped":
        overrides["rope_parameters"] = {"rope_type": "default", "rope_theta": LLAMA3["rope_theta"]}
    elif error == "tied/untied confused":
        state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    elif error == "q/k/v biases dropped":
        for key in [k for k in state if k.endswith("_proj.bias")]:
            state[key] = torch.zeros_like(state[key])
    return make_model(kind, overrides, state)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """transformers' logits and the engine's logits of every model after `convert from-hf`; the Llama model
    also after a further `convert to-hf`."""
    work = tmp_path_factory.mktemp("wiring")
    ids = torch.randint(0, VOCAB, (SEQ,), generator=torch.Generator().manual_seed(0)).tolist()
    (work / "ids.json").write_text(json.dumps(ids))
    models, checkpoints = {}, []
    for kind in ("llama", "qwen2", "mistral"):
        models[kind] = make_model(kind)
        models[kind].save_pretrained(work / f"hf_{kind}")
        run([sys.executable, "-m", "megatron_llm", "convert", "from-hf", "--hf", str(work / f"hf_{kind}"),
             "--output", str(work / f"mg_{kind}")])
        checkpoints.append(str(work / f"mg_{kind}"))
    run([sys.executable, "tests/e2e/convert_worker.py", "forward", str(work / "engine.pt"), str(work / "ids.json"),
         *checkpoints])
    engine = torch.load(work / "engine.pt", weights_only=False)
    run([sys.executable, "-m", "megatron_llm", "convert", "to-hf", "--checkpoint", str(work / "mg_llama"),
         "--output", str(work / "hf_llama_back"), "--no-progress"])
    import transformers

    back = transformers.AutoModelForCausalLM.from_pretrained(work / "hf_llama_back", dtype=torch.float32).eval()
    return {
        "ids": ids,
        "models": models,
        "hf": {kind: hf_logits(model, ids) for kind, model in models.items()},
        "engine": {kind: engine[path]["logits"] for kind, path in zip(models, checkpoints)},
        "exported": hf_logits(back, ids),
    }


def test_weights_make_attention_and_logits_far_from_uniform(converted):
    """The premise of the negative controls: peaked attention, logits spread over several nats."""
    model, ids = converted["models"]["llama"], converted["ids"]
    with torch.no_grad():
        attentions = model(torch.tensor([ids]), output_attentions=True).attentions
    for probabilities in attentions:
        entropy = -(probabilities * probabilities.clamp_min(1e-30).log()).sum(-1)[..., 50:]
        uniform = torch.log(torch.arange(51, SEQ + 1, dtype=torch.float32))
        assert float((entropy / uniform).mean()) < 0.5
    assert float(converted["hf"]["llama"].std(dim=-1).mean()) > 2.0


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral"])
def test_imported_model_gives_transformers_logits(converted, kind):
    assert relative_error(converted["engine"][kind], converted["hf"][kind]) < TOL


def test_exported_model_gives_the_original_logits(converted):
    assert relative_error(converted["exported"], converted["hf"]["llama"]) < TOL


WIRING_ERRORS = [("llama", e) for e in ("swapped query heads", "swapped key/value heads", "interleaved rope pairing",
                                        "wrong rope theta", "llama3 scaling dropped", "gate/up swapped",
                                        "tied/untied confused")] + [("qwen2", "q/k/v biases dropped")]


@pytest.mark.parametrize("kind, error", WIRING_ERRORS, ids=[e for _, e in WIRING_ERRORS])
def test_each_wiring_error_would_fail_the_comparison(converted, kind, error):
    wrong = hf_logits(wired_wrongly(kind, converted["models"][kind], error), converted["ids"])
    assert relative_error(wrong, converted["hf"][kind]) > 100 * TOL, error
