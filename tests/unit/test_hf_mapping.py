"""The megatron <-> Hugging Face weight map (tables of mapping objects) and config mapping, without checkpoints.

References: transformers' own models (tensor names and shapes, `repeat_kv`'s query-to-key-head order) and
megatron-core's own tensor-parallel sharding of GPTModels built at TP=2 in two gloo processes.
"""

import json
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from megatron_llm.config.schema import Config, ModelConfig
from megatron_llm.convert.from_hf import check_weights
from megatron_llm.convert.hf_config import hf_config_dict, model_config_from_hf
from megatron_llm.convert.hf_files import INDEX, SafetensorsReader, StreamingSafetensorsWriter
from megatron_llm.convert.mapping import Dims, GatedMLP, Vocab, at_layer, pad_vocab, unpad_vocab
from megatron_llm.convert.tables import LLAMA, QWEN2, QWEN3, Table, export_entry, import_entry, table_for
from megatron_llm.errors import UsageError

# Adding an architecture variant is one entry per new tensor: Qwen3's QK-norm (`tables.QWEN3`) is two.
TABLES = {"llama": LLAMA, "qwen2": QWEN2, "qwen3": QWEN3}

# GQA (3 query heads per group), head_dim != hidden / heads, a padded vocabulary
GQA = ModelConfig(num_layers=2, hidden_size=32, ffn_hidden_size=48, num_attention_heads=6, num_query_groups=2,
                  kv_channels=8, vocab_size=100, add_qkv_bias=True)


def _dims(model: ModelConfig, padded: int = 128) -> Dims:
    return Dims(model, model.vocab_size, padded)


def _random_hf(entry, layer, dims, generator) -> dict[str, torch.Tensor]:
    return {at_layer(name, layer): torch.randn(dims.shape(shape), generator=generator)
            for name, shape in entry.hf_sources(dims).items()}


def _reader(tensor: torch.Tensor):
    return lambda rows: tensor if rows is None else tensor[rows[0]:rows[1]]


def _round_trip(table: Table, dims: Dims, layer: int = 1) -> dict[str, float]:
    """HF -> megatron -> HF for every entry of `table` on random tensors: the largest difference per entry."""
    generator = torch.Generator().manual_seed(0)
    worst = {}
    for entry in table.entries:
        at = layer if entry.per_layer else None
        hf = _random_hf(entry, at, dims, generator)
        megatron = import_entry(entry, hf.__getitem__, at, dims)
        assert tuple(megatron.shape) == entry.megatron_shape(dims), entry
        back = dict(export_entry(entry, _reader(megatron), at, dims))
        assert back.keys() == {at_layer(n, at) for n in entry.hf_shapes(dims)}, entry
        assert all(torch.equal(back[n], hf[n]) for n in back), entry
        worst[entry.megatron] = max([(back[n] - hf[n]).abs().max().item() for n in back], default=0.0)
    return worst


@pytest.mark.parametrize("name", TABLES)
@pytest.mark.parametrize("tied", [False, True])
def test_every_table_entry_round_trips_bit_exactly(name, tied):
    model = ModelConfig(**{**GQA.__dict__, "tie_embeddings": tied})
    dims = _dims(model)
    worst = _round_trip(TABLES[name], dims)
    assert worst == {entry.megatron: 0.0 for entry in TABLES[name].entries}
    output = TABLES[name].find("output_layer.weight")[0]
    assert (output.hf_shapes(dims) == {}) == tied  # a tied output layer is not exported ...
    if tied:  # ... and is imported from the embedding, padded like it
        embed = {"model.embed_tokens.weight": torch.randn(100, 32)}
        padded = import_entry(output, embed.__getitem__, None, dims)
        assert padded.shape == (128, 32) and torch.equal(padded[:100], embed["model.embed_tokens.weight"])
        assert not padded[100:].any()
    # negative control: a gated MLP that stacks [up; gate] on import breaks the round trip by O(1)
    swapped = GatedMLP("decoder.layers.*.mlp.linear_fc1.weight", gate="model.layers.*.mlp.up_proj.weight",
                       up="model.layers.*.mlp.gate_proj.weight")
    hf = _random_hf(swapped, 1, dims, torch.Generator().manual_seed(1))
    megatron = import_entry(swapped, hf.__getitem__, 1, dims)
    real = dict(export_entry(LLAMA.find("decoder.layers.1.mlp.linear_fc1.weight")[0], _reader(megatron), 1, dims))
    assert max((real[n] - hf[n]).abs().max().item() for n in real) > 1.0


def test_qkv_groups_query_heads_with_their_kv_head_as_transformers_repeat_kv_does():
    from transformers.models.llama.modeling_llama import repeat_kv

    dims = _dims(GQA)
    qkv = QWEN2.find("decoder.layers.1.self_attention.linear_qkv.weight")[0]
    hf = _random_hf(qkv, 1, dims, torch.Generator().manual_seed(0))
    grouped = import_entry(qkv, hf.__getitem__, 1, dims).reshape(2, 3 + 2, 8, 32)
    q = hf["model.layers.1.self_attn.q_proj.weight"].reshape(6, 8, 32)
    k = hf["model.layers.1.self_attn.k_proj.weight"].reshape(1, 2, 8, 32)
    v = hf["model.layers.1.self_attn.v_proj.weight"].reshape(1, 2, 8, 32)
    k_per_query, v_per_query = repeat_kv(k, 3)[0], repeat_kv(v, 3)[0]  # the key/value head each query head uses
    for head in range(6):
        group = next(g for g in range(2) if any(torch.equal(grouped[g, s], q[head]) for s in range(3)))
        assert torch.equal(grouped[group, 3], k_per_query[head]) and torch.equal(grouped[group, 4], v_per_query[head])
    # negative control: with one group fewer per slot the query/key pairing would be wrong
    assert not torch.equal(grouped[0, 3], k_per_query[3])


@pytest.mark.parametrize("name, tied", [("llama", True), ("llama", False), ("qwen2", False), ("qwen3", False)])
def test_table_names_and_shapes_are_those_of_the_transformers_model(name, tied):
    import transformers

    cls = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3"}[name]
    hf_config = getattr(transformers, cls + "Config")(  # head_dim 12 != hidden / heads
        hidden_size=48, intermediate_size=40, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
        head_dim=12, vocab_size=100, tie_word_embeddings=tied)
    hf_model = getattr(transformers, cls + "ForCausalLM")(hf_config)
    expected = {k: tuple(v.shape) for k, v in hf_model.state_dict().items()}
    if tied:
        expected.pop("lm_head.weight")  # transformers lists the tied copy; the export writes the embedding once
    model = ModelConfig(**{**GQA.__dict__, "hidden_size": 48, "ffn_hidden_size": 40, "kv_channels": 12,
                           "tie_embeddings": tied, "add_qkv_bias": name == "qwen2"})
    plan = TABLES[name].hf_plan(_dims(model))
    assert len(plan) == len(dict(plan)) and dict(plan) == expected
    if name != "qwen3":  # defined by the test, not selected by a config
        assert table_for(model) is TABLES[name]


def test_table_lookup_knows_both_layer_specs_and_refuses_unknown_names():
    entry, layer = LLAMA.find("decoder.layers.11.input_layernorm.weight")  # megatron-core's local layer spec
    assert layer == 11 and entry is LLAMA.find("decoder.layers.0.self_attention.linear_qkv.layer_norm_weight")[0]
    assert LLAMA.find("decoder.final_layernorm.weight") == (LLAMA.tail[0], None)
    with pytest.raises(UsageError, match="'decoder.layers.0.self_attention.linear_qkv.bias' has no Hugging Face"):
        LLAMA.find("decoder.layers.0.self_attention.linear_qkv.bias")
    with pytest.raises(ValueError, match="consecutive"):
        Table("x", [LLAMA.layer[0], LLAMA.tail[0], LLAMA.layer[1]])
    with pytest.raises(ValueError, match="mapped twice"):
        LLAMA.variant("x", LLAMA.layer[0])


def test_import_shape_mismatch_names_the_tensor_and_the_config_fields():
    dims = _dims(GQA)
    up = LLAMA.find("decoder.layers.1.mlp.linear_fc1.weight")[0]
    hf = _random_hf(up, 1, dims, torch.Generator().manual_seed(0))
    hf["model.layers.1.mlp.up_proj.weight"] = torch.zeros(47, 32)
    with pytest.raises(UsageError, match=r"model\.layers\.1\.mlp\.up_proj\.weight: shape \(47, 32\), expected "
                                         r"\(intermediate_size, hidden_size\) = \(48, 32\)"):
        import_entry(up, hf.__getitem__, 1, dims)


def test_check_weights_tolerates_buffers_and_tied_copies_but_not_strangers(tmp_path):
    config = Config()
    config.model = ModelConfig(**{**GQA.__dict__, "tie_embeddings": True, "add_qkv_bias": False})
    dims = _dims(config.model, 128)
    tensors = {name: torch.zeros(shape) for name, shape in LLAMA.hf_plan(dims)}
    tensors["lm_head.weight"] = torch.zeros(100, 32)
    tensors["model.layers.1.self_attn.rotary_emb.inv_freq"] = torch.zeros(4)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    check_weights(SafetensorsReader(tmp_path), config)
    save_file({**tensors, "model.layers.1.self_attn.q_norm.weight": torch.zeros(8)},
              str(tmp_path / "model.safetensors"))
    with pytest.raises(UsageError, match="'model.layers.1.self_attn.q_norm.weight' has no place in a 2-layer llama"):
        check_weights(SafetensorsReader(tmp_path), config)
    del tensors["model.layers.0.mlp.down_proj.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(UsageError, match="'model.layers.0.mlp.down_proj.weight' is missing"):
        check_weights(SafetensorsReader(tmp_path), config)


# --- the TP split of every entry against megatron-core's own sharding at TP=2 ------------------------------

_TP_MODELS = {
    # table name: (model overrides, qk_layernorm)
    "qwen2": ({"add_qkv_bias": True}, False),  # GQA, q/k/v bias, untied output layer
    "llama": ({"num_query_groups": 1, "tie_embeddings": True}, False),  # fewer query groups than TP ranks
    "qwen3": ({}, True),
}


def _tp_model_config(overrides: dict) -> Config:
    config = Config()
    fields = dict(num_layers=2, hidden_size=64, ffn_hidden_size=160, num_attention_heads=4, num_query_groups=2,
                  kv_channels=24, vocab_size=500, max_position_embeddings=64)
    config.model = ModelConfig(**{**fields, **overrides})
    config.parallel.tensor = 2
    config.data.seq_length = 64
    return config


def _build(config: Config, qk_layernorm: bool):
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    from megatron_llm.model.builder import build_model_chunks, transformer_config
    from megatron_llm.runtime.hardware import detect_platform

    if not qk_layernorm:
        return build_model_chunks(config, config.model.vocab_size, detect_platform())[0]
    # megatron-core's own local spec with QK-norm (the engine's builder has no such option)
    return GPTModel(config=transformer_config(config, detect_platform()),
                    transformer_layer_spec=get_gpt_layer_local_spec(qk_layernorm=True, normalization="RMSNorm"),
                    vocab_size=512, max_sequence_length=64, position_embedding_type="rope")


def _global_tensors(model) -> dict[str, torch.Tensor]:
    """Every checkpoint tensor of `model`, assembled from all TP ranks' shards where megatron-core's
    sharded_state_dict says each shard belongs."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, apply_factories

    state = model.sharded_state_dict()
    apply_factories(state)
    mine = [(t.key, tuple(t.global_shape), tuple(t.global_offset), t.prepend_axis_num, t.data.detach().clone())
            for t in nested_values(state) if isinstance(t, ShardedTensor)]
    everyone: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(everyone, mine)
    full: dict[str, torch.Tensor] = {}
    for key, shape, offset, prepend, data in (item for rank in everyone for item in rank):
        target = full.setdefault(key, torch.full(shape, float("nan")))
        region = target
        for dim, start in enumerate(offset):
            length = 1 if dim < prepend else data.shape[dim - prepend]
            region = region.narrow(dim, start, length)
        region.copy_(data.reshape(region.shape))
    return full


def _tp_worker(rank: int, port: int, out: str) -> None:
    import os

    from megatron.core import parallel_state

    from megatron_llm.runtime.distributed import init_distributed

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    results = {}
    for name, (overrides, qk_layernorm) in _TP_MODELS.items():
        config = _tp_model_config(overrides)
        init_distributed(config.parallel)
        tp_rank = parallel_state.get_tensor_model_parallel_rank()
        model = _build(config, qk_layernorm)
        # distinct values everywhere (megatron-core starts norms at 1 and biases at 0); replicated tensors
        # stay equal on both ranks
        with torch.no_grad():
            for index, param in enumerate(model.parameters()):
                split = getattr(param, "tensor_model_parallel", False)
                generator = torch.Generator().manual_seed(10 * index + (rank if split else 0))
                param.copy_(torch.randn(param.shape, generator=generator))
        full = _global_tensors(model)
        table = TABLES[name]
        dims = Dims(config.model, 500, 512)
        checked = {}
        for param_name, param in model.named_parameters():
            entry, layer = table.find(param_name)
            merged = full[entry.checkpoint_key]
            merged = merged[layer] if entry.per_layer else merged
            ours = entry.tp_shard(merged, tp_rank, 2)
            megatron_dim = param.partition_dim if getattr(param, "tensor_model_parallel", False) else None
            hf = dict(export_entry(entry, _reader(merged), layer, dims))
            back = import_entry(entry, hf.__getitem__, layer, dims)
            rows = dims.vocab_size if isinstance(entry, Vocab) else None  # the padding rows are not exported
            checked[param_name] = {
                "entry": entry.megatron, "equal": ours.shape == param.shape and torch.equal(ours, param),
                "dims_agree": megatron_dim == entry.tp_dim, "round_trip": torch.equal(back[:rows], merged[:rows]),
            }
            if entry.megatron.endswith("linear_fc1.weight"):  # negative control: the naive contiguous split
                naive = torch.chunk(merged, 2, 0)[tp_rank]
                checked[param_name]["naive_fc1_diff"] = (naive - param).abs().max().item()
        results[name] = {"entries": [e.megatron for e in table.entries], "params": checked}
        parallel_state.destroy_model_parallel()
    torch.distributed.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(results))


def test_tp_split_of_every_entry_is_megatron_cores_own_at_tp2(tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_tp_worker, args=(port, str(tmp_path)), nprocs=2, start_method="spawn")
    for rank in range(2):
        results = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for name, result in results.items():
            params = result["params"]
            assert all(p["equal"] and p["dims_agree"] and p["round_trip"] for p in params.values()), (name, params)
            covered = {p["entry"] for p in params.values()}
            tied_out = {"output_layer.weight"} if _TP_MODELS[name][0].get("tie_embeddings") else set()
            assert covered == set(result["entries"]) - tied_out, name  # every entry met a real parameter
            fc1 = [p["naive_fc1_diff"] for p in params.values() if "naive_fc1_diff" in p]
            assert fc1 and min(fc1) > 1.0  # the gate/up interleaving matters: a plain split is far off


def test_vocab_padding_is_removed_on_export():
    padded = pad_vocab(torch.ones(100, 4), 128)
    assert padded.shape == (128, 4) and padded[100:].abs().sum() == 0
    assert torch.equal(unpad_vocab(padded, 100, "x"), torch.ones(100, 4))
    with pytest.raises(UsageError, match="embedding.word_embeddings.weight: 128 rows"):
        unpad_vocab(padded, 129, "embedding.word_embeddings.weight")


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
