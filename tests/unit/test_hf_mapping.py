"""The megatron <-> Hugging Face tensor and config mapping, without processes or checkpoints."""

import json

import pytest
import torch
from safetensors.torch import save_file

from megatron_llm.config.schema import ModelConfig
from megatron_llm.convert import mapping
from megatron_llm.convert.from_hf import tp_shard
from megatron_llm.convert.hf_config import hf_config_dict, model_config_from_hf
from megatron_llm.convert.hf_files import INDEX, SafetensorsReader, StreamingSafetensorsWriter
from megatron_llm.errors import UsageError

GQA = ModelConfig(num_layers=2, hidden_size=32, ffn_hidden_size=48, num_attention_heads=6, num_query_groups=2,
                  kv_channels=8, vocab_size=100, add_qkv_bias=True)


def _hf_layer(model: ModelConfig) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    h, d, heads, groups, ffn = model.hidden_size, model.head_dim, model.num_attention_heads, model.query_groups, \
        model.ffn_hidden_size
    shapes = {"input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,),
              "self_attn.q_proj.weight": (heads * d, h), "self_attn.k_proj.weight": (groups * d, h),
              "self_attn.v_proj.weight": (groups * d, h), "self_attn.o_proj.weight": (h, heads * d),
              "mlp.gate_proj.weight": (ffn, h), "mlp.up_proj.weight": (ffn, h), "mlp.down_proj.weight": (h, ffn),
              "self_attn.q_proj.bias": (heads * d,), "self_attn.k_proj.bias": (groups * d,),
              "self_attn.v_proj.bias": (groups * d,)}
    return {f"model.layers.1.{k}": torch.randn(s) for k, s in shapes.items()}


def test_layer_round_trip_is_exact_and_groups_queries_with_their_kv_head():
    hf = _hf_layer(GQA)
    meg = mapping.hf_layer_to_megatron(hf.__getitem__, 1, GQA)
    grouped = meg[mapping.QKV].reshape(2, 3 + 2, 8, 32)
    # group 1 holds query heads 3..5 (HF repeat_kv order), then key head 1, then value head 1
    assert torch.equal(grouped[1, :3].reshape(24, 32), hf["model.layers.1.self_attn.q_proj.weight"][24:])
    assert torch.equal(grouped[1, 3], hf["model.layers.1.self_attn.k_proj.weight"][8:])
    assert torch.equal(grouped[1, 4], hf["model.layers.1.self_attn.v_proj.weight"][8:])
    assert torch.equal(meg[mapping.FC1][:48], hf["model.layers.1.mlp.gate_proj.weight"])
    back = mapping.megatron_layer_to_hf(meg, 1, GQA)
    assert back.keys() == hf.keys()
    assert all(torch.equal(back[k], hf[k]) for k in hf)


def test_shape_mismatch_names_the_tensor():
    hf = _hf_layer(GQA)
    hf["model.layers.1.mlp.up_proj.weight"] = torch.zeros(47, 32)
    with pytest.raises(UsageError, match=r"model\.layers\.1\.mlp\.up_proj\.weight: shape \(47, 32\)"):
        mapping.hf_layer_to_megatron(hf.__getitem__, 1, GQA)


def test_tp_shard_splits_gate_and_up_separately_and_merges_back():
    full = torch.arange(8 * 3).reshape(8, 3).float()
    param = torch.nn.Parameter(torch.empty(4, 3))
    param.tensor_model_parallel, param.partition_dim = True, 0
    parts = [tp_shard(full, param, "decoder.layers.0.mlp.linear_fc1.weight", r, 2) for r in range(2)]
    assert torch.equal(parts[1], torch.cat([full[2:4], full[6:8]]))
    gates = torch.cat([p[:2] for p in parts])
    ups = torch.cat([p[2:] for p in parts])
    assert torch.equal(torch.cat([gates, ups]), full)
    row = torch.nn.Parameter(torch.empty(8, 1))
    row.tensor_model_parallel, row.partition_dim = True, 1
    assert torch.equal(tp_shard(full, row, "decoder.layers.0.mlp.linear_fc2.weight", 2, 3), full[:, 2:3])
    assert tp_shard(full, torch.nn.Parameter(full.clone()), "decoder.final_layernorm.weight", 1, 2) is full


def test_vocab_padding_is_removed_on_export():
    padded = mapping.pad_vocab(torch.ones(100, 4), 128)
    assert padded.shape == (128, 4) and padded[100:].abs().sum() == 0
    assert torch.equal(mapping.unpad_vocab(padded, 100, "x"), torch.ones(100, 4))
    with pytest.raises(UsageError, match="embedding.word_embeddings.weight: 128 rows"):
        mapping.unpad_vocab(padded, 129, mapping.EMBEDDING)


@pytest.mark.parametrize("scaling", [None, "llama3"])
def test_config_round_trip_keeps_the_fields_that_matter(scaling):
    model = ModelConfig(num_layers=3, hidden_size=48, ffn_hidden_size=80, num_attention_heads=4, num_query_groups=1,
                        kv_channels=16, vocab_size=500, rotary_base=500000, rope_scaling=scaling,
                        rope_scaling_factor=32.0, norm_epsilon=1e-6, tie_embeddings=True, max_position_embeddings=512)
    raw = hf_config_dict(model, 500, "bf16", {"bos": 1, "eos": 2, "pad": None})
    assert raw["architectures"] == ["LlamaForCausalLM"] and raw["dtype"] == "bfloat16"
    back = model_config_from_hf(json.loads(json.dumps(raw)))
    for field in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
                  "kv_channels", "vocab_size", "rotary_base", "rope_scaling", "norm_epsilon", "tie_embeddings",
                  "max_position_embeddings", "add_qkv_bias"):
        assert getattr(back, field) == getattr(model, field), field
    if scaling:
        assert back.rope_scaling_factor == 32.0


def test_qkv_bias_exports_as_qwen2_and_legacy_rope_fields_are_read():
    raw = hf_config_dict(GQA, 100, "fp32", {})
    assert raw["model_type"] == "qwen2" and raw["architectures"] == ["Qwen2ForCausalLM"]
    legacy = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "vocab_size": 10, "rope_theta": 500000.0,
              "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}
    model = model_config_from_hf(legacy)
    assert (model.rotary_base, model.rope_scaling, model.query_groups, model.head_dim) == (500000, "llama3", 4, 16)


@pytest.mark.parametrize("change, message", [
    ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, "model_type='gpt2'"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}, "rope_type='yarn'"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0, "low_freq_factor": 2.0}},
     "low_freq_factor=2.0"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 10000.5}}, "rope_theta=10000.5"),
    ({"model_type": "mistral", "sliding_window": 64, "max_position_embeddings": 256}, "sliding_window=64"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"attention_bias": True}, "attention_bias"),
    ({"num_hidden_layers": None}, "'num_hidden_layers' is missing"),
])
def test_unsupported_configs_name_the_field(change, message):
    raw = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
           "num_attention_heads": 4, "vocab_size": 10, **change}
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("(", r"\(")):
        model_config_from_hf(raw, "x/config.json")


def test_streaming_writer_shards_by_plan_and_reader_reads_back(tmp_path):
    plan = [(f"t{i}", (10, 10)) for i in range(6)]
    writer = StreamingSafetensorsWriter(tmp_path, plan, torch.bfloat16, max_shard_bytes=400)
    assert writer.shard_names == [f"model-0000{i}-of-00003.safetensors" for i in range(1, 4)]
    tensors = {name: torch.randn(shape) for name, shape in plan}
    with pytest.raises(UsageError, match="t0: shape \\(10, 9\\)"):
        writer.add("t0", torch.zeros(10, 9))
    with pytest.raises(UsageError, match="out of order"):
        writer.add("t1", tensors["t1"])
    for name, tensor in tensors.items():
        writer.add(name, tensor.t().contiguous().t())  # a non-contiguous view is written in logical order
    assert writer.finish() == writer.shard_names
    index = json.loads((tmp_path / INDEX).read_text())
    assert index["metadata"]["total_size"] == 1200 and index["weight_map"]["t3"] == writer.shard_names[1]
    reader = SafetensorsReader(tmp_path)
    assert torch.equal(reader.get("t4"), tensors["t4"].to(torch.bfloat16)) and reader.shape("t5") == (10, 10)
    with pytest.raises(UsageError, match="tensor 'nope' is missing"):
        reader.get("nope")
    (tmp_path / writer.shard_names[1]).unlink()
    with pytest.raises(UsageError, match=f"{writer.shard_names[1]}: missing"):
        reader.get("t2")


def test_reader_errors_name_the_file(tmp_path):
    with pytest.raises(UsageError, match="no model.safetensors"):
        SafetensorsReader(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(UsageError, match="pytorch_model.bin"):
        SafetensorsReader(tmp_path)
    save_file({"a": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    assert SafetensorsReader(tmp_path).names() == ["a"]
