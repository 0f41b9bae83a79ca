"""The planted bugs `make mutants` applies, one at a time: (name, file, original text, mutated text, tests that
must fail). Each original text must occur exactly once in its file; a mutant whose text is gone (the code was
rewritten) is reported as stale, which fails the run like a survivor until the list is updated."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    original: str
    mutated: str
    tests: tuple[str, ...]


LOSS_AVERAGING = "tests/distributed/test_loss_averaging.py"
LAYOUTS = "tests/distributed/test_layout_equivalence.py::test_layouts_match_single_process"
RESUME = "tests/distributed/test_checkpoint_resume.py::test_interrupted_run_matches_straight_run_bit_for_bit"
SCHEDULES = "tests/e2e/test_schedule_closed_forms.py::test_logged_learning_rate_is_the_closed_form"
MEGATRON_FLAGS = "tests/unit/test_preprocess_megatron.py::test_megatron_flags_write_megatron_lms_files"
EXPORT_EVAL = "tests/e2e/test_sft_evaluate.py::test_exported_model_matches_evaluate_in_transformers_and_lm_eval"
WIRING = "tests/e2e/test_convert_wiring.py::test_imported_model_gives_transformers_logits"

MUTANTS: list[Mutant] = [
    Mutant(
        "per-micro-batch loss mean",
        "megatron_llm/training/forward.py",
        "    return loss_sum, mask.sum().to(torch.int), {LOSS_KEY: report}",
        "    return loss_sum / mask.sum().clamp(min=1), torch.ones((), dtype=torch.int), {LOSS_KEY: report}",
        (LOSS_AVERAGING,),
    ),
    Mutant(
        "skipped grad all-reduce on one DP rank (its own gradient replaces the reduced one)",
        "megatron_llm/training/optimizer.py",
        "    tconfig.finalize_model_grads_func = finalize_model_grads\n",
        "    def _finalize(model, num_tokens=None, *args, **kwargs):\n"
        "        from megatron.core import parallel_state\n"
        "        local = [b.grad_data.clone() for c in model for b in c.buffers]\n"
        "        finalize_model_grads(model, num_tokens, *args, **kwargs)\n"
        "        if parallel_state.get_data_parallel_rank() == 1:\n"
        "            for b, g in zip([b for c in model for b in c.buffers], local):\n"
        "                b.grad_data.copy_(g if num_tokens is None else g / num_tokens)\n"
        "    tconfig.finalize_model_grads_func = _finalize\n",
        (LOSS_AVERAGING, LAYOUTS),
    ),
    Mutant(
        "off-by-one in the data index on resume",
        "megatron_llm/training/loop.py",
        "        self.consumed_samples = int(saved[\"consumed_samples\"])\n",
        "        self.consumed_samples = int(saved[\"consumed_samples\"]) + 1\n",
        (RESUME,),
    ),
    Mutant(
        "EOD id (BOS instead of the model's </s>)",
        "megatron_llm/data/tokenizers/megatron_flags.py",
        "    return SentencePieceTokenizer(\n        proto,\n        processor.eos_id(),\n",
        "    return SentencePieceTokenizer(\n        proto,\n        processor.bos_id(),\n",
        (MEGATRON_FLAGS,),
    ),
    Mutant(
        "dropped padding mask (padding positions scored)",
        "megatron_llm/evaluation/scoring.py",
        "    loss_mask = torch.zeros(seq_length, dtype=torch.float32)",
        "    loss_mask = torch.ones(seq_length, dtype=torch.float32)",
        (EXPORT_EVAL,),
    ),
    Mutant(
        "wrong warmup (one step longer)",
        "megatron_llm/training/optimizer.py",
        "        lr_warmup_steps=o.warmup_iters * gbs,",
        "        lr_warmup_steps=(o.warmup_iters + 1) * gbs,",
        (SCHEDULES,),
    ),
    Mutant(
        "swapped query heads (import)",
        "megatron_llm/convert/mapping.py",
        "        grouped = torch.cat([q.reshape(groups, per_group, head_dim, *tail), ",
        "        grouped = torch.cat([q.reshape(per_group, groups, head_dim, *tail).transpose(0, 1), ",
        (WIRING,),
    ),
    Mutant(
        "swapped key/value heads (import)",
        "megatron_llm/convert/mapping.py",
        "k.reshape(groups, 1, head_dim, *tail),\n                             v.reshape(groups, 1, head_dim, *tail)]",
        "k.reshape(groups, 1, head_dim, *tail).flip(0),\n                             "
        "v.reshape(groups, 1, head_dim, *tail).flip(0)]",
        (WIRING,),
    ),
    Mutant(
        "wrong RoPE pairing (interleaved instead of half-split)",
        "megatron_llm/model/builder.py",
        "        persist_layer_norm=False,\n",
        "        persist_layer_norm=False,\n        rotary_interleaved=True,\n",
        (WIRING,),
    ),
    Mutant(
        "wrong rope theta (import)",
        "megatron_llm/convert/hf_config.py",
        "        rotary_base=theta,\n",
        "        rotary_base=10000.0,\n",
        (WIRING,),
    ),
    Mutant(
        "missing llama3 rope scaling (import)",
        "megatron_llm/convert/hf_config.py",
        "        rope_scaling=scaling,\n",
        "        rope_scaling=None,\n",
        (WIRING,),
    ),
    Mutant(
        "gate/up swapped (import)",
        "megatron_llm/convert/mapping.py",
        "        return torch.cat([hf[self.gate], hf[self.up]], dim=0)",
        "        return torch.cat([hf[self.up], hf[self.gate]], dim=0)",
        (WIRING,),
    ),
    Mutant(
        "tied/untied confusion (import)",
        "megatron_llm/convert/hf_config.py",
        "        tie_embeddings=bool(raw.get(\"tie_word_embeddings\", False)),",
        "        tie_embeddings=not bool(raw.get(\"tie_word_embeddings\", False)),",
        (WIRING,),
    ),
]
