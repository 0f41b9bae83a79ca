"""The human-readable plan, rendered from the same document `--json` prints."""

from __future__ import annotations

from megatron_llm.planning.gpus import GIB
from megatron_llm.planning.units import human

PARTS = ("weights", "gradients", "optimizer", "activations", "buffers", "total")
PART_HEADS = ("weights", "grads", "optim", "activ", "buffers", "total GiB")


def _gib(value: float) -> str:
    return f"{value / GIB:.1f}"


def _split_label(split: dict) -> str:
    parts = [name for key, name in (("account_for_embedding", "E"), ("account_for_loss", "L")) if split[key]]
    parts += [f"{key[:-13]}={split[key]}" for key in ("first_stage_layers", "last_stage_layers")
              if split[key] is not None]
    return "+".join(parts)


def _layout_cells(layout: dict) -> list[str]:
    split = _split_label(layout["split"])
    return [
        str(layout["tensor"]),
        str(layout["pipeline"]),
        str(layout["virtual"] or "-"),
        split or "even",
        str(layout["context"]),
        str(layout["data"]),
        str(layout["micro_batch"]),
        layout.get("recompute_label", layout["recompute"]),
        "on" if layout["distributed_optimizer"] else "off",
    ]


LAYOUT_HEAD = ["TP", "PP", "VPP", "split", "CP", "DP", "mb", "recompute", "distopt"]
BREAKDOWN_HEAD = ["compute", "recompute", "bubble", "TP", "CP", "PP", "DP", "optim", "total s"]
BREAKDOWN_KEYS = ["compute", "recompute", "bubble", "tp_comm", "cp_comm", "pp_comm", "dp_comm", "optimizer"]


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    line = "  ".join(h.rjust(w) for h, w in zip(head, widths))
    return ["  " + line] + ["  " + "  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]


def _money(value: float | None) -> str:
    return "-" if value is None else f"${value:,.0f}"


def _candidate_row(entry: dict, rank: int | None = None) -> list[str]:
    memory, timing, cost = entry.get("memory"), entry.get("timing"), entry.get("cost")
    cells = ([str(rank)] if rank is not None else []) + _layout_cells(entry["layout"])
    cells += [_gib(memory[p]) if memory else "-" for p in PARTS]
    if timing and cost:
        cells += [f"{timing['mfu']:.3f}", f"{timing['tflops_per_gpu']:.0f}", f"{timing['step_seconds']:.2f}",
                  f"{cost['days']:.1f}"]
        cells.append(_money(cost["dollars"]))
    else:
        cells += ["-"] * 5
    return cells


def _breakdown_row(entry: dict, rank: int) -> list[str]:
    timing = entry["timing"]
    parts = timing["breakdown"]
    return [str(rank)] + [f"{parts[key]:.2f}" for key in BREAKDOWN_KEYS] + [f"{timing['step_seconds']:.2f}"]


def _parameters(plan: dict) -> list[str]:
    p = plan["parameters"]
    f = plan["flops"]["dims"]
    tied = "tied to the embedding" if p["output_layer"] == 0 else f"vocab {p['vocab_size']:,} x hidden {f['hidden']:,}"
    lines = [
        "Parameters (exact, from the architecture)",
        f"  total          {p['total']:>16,}  ({human(p['total'])})",
        f"  embedding      {p['embedding']:>16,}  (vocab {p['vocab_size']:,} x hidden {f['hidden']:,})",
        f"  output layer   {p['output_layer']:>16,}  ({tied})",
        f"  non-embedding  {p['non_embedding']:>16,}  ({f['layers']} layers x {p['per_layer']:,} + final norm "
        f"{f['hidden']:,})",
    ]
    padding = p["padded_vocab_size"] - p["vocab_size"]
    if padding:
        lines.append(
            f"  megatron-core pads the vocabulary to {p['padded_vocab_size']:,} (a multiple of "
            f"make_vocab_size_divisible_by x TP={p['tensor_parallel_for_padding']}): "
            f"+{p['vocab_padding']:,} parameters, {p['built_total']:,} as built"
        )
    else:
        lines.append(f"  vocabulary padding: none at TP={p['tensor_parallel_for_padding']} ({p['vocab_size']:,} rows)")
    return lines


def _flops(plan: dict) -> list[str]:
    f, inputs = plan["flops"], plan["inputs"]
    d, t = f["dims"], f["per_token"]
    over = f["recompute_overhead"]
    return [
        f"FLOPs (Megatron-LM's accounting, seq_length {d['seq_length']:,})",
        f"  6N          = 6 x {f['gemm_params']:,} GEMM parameters = {t['six_n']:.4e} per token",
        "                (N: every linear layer and the output layer; not the embedding lookup or the norms)",
        f"  attention   = 6 x {d['layers']} layers x q {d['q']:,} x seq {d['seq_length']:,} = {t['attention']:.4e} "
        "per token (QK^T and (QK^T)V, causal half)",
        f"  total       = {t['total']:.4e} FLOPs per token",
        f"  per step    = {t['total']:.4e} x {inputs['global_batch_tokens']:,} tokens = {f['per_step']:.4e}",
        f"  whole run   = {t['total']:.4e} x {inputs['tokens']:.4e} tokens = {f['run_total']:.4e}",
        f"  recompute makes the GPUs do more (not counted in MFU): selective +{over['selective']:.1%}, "
        f"full +{over['full']:.1%}",
    ]


def _memory_line(memory: dict) -> str:
    return (
        f"weights {_gib(memory['weights'])} + gradients {_gib(memory['gradients'])} + optimizer "
        f"{_gib(memory['optimizer'])} + activations {_gib(memory['activations'])} + buffers "
        f"{_gib(memory['buffers'])} = {_gib(memory['total'])} GiB (pipeline stage {memory['pipeline_rank']})"
    )


def _stages(stages: list[dict]) -> list[str]:
    lines = []
    for stage in stages:
        layers = ", ".join(f"{a}-{b - 1}" if b - a > 1 else str(a) for a, b in stage["layers"] if b > a) or "none"
        extras = [name for key, name in (("has_embedding", "embedding"), ("has_output_layer", "final norm + output"),
                                         ("tied_embedding_copy", "tied-embedding copy")) if stage[key]]
        extra = f" + {', '.join(extras)}" if extras else ""
        lines.append(
            f"    stage {stage['pipeline_rank']}: layers {layers}{extra}: "
            f"{stage['params_per_tensor_rank']:,} parameters per TP rank"
        )
    return lines


def _configured(plan: dict) -> list[str]:
    entry = plan["configured_layout"]
    head = f"Your config's layout on {plan['inputs']['gpus']} GPUs: {_label(entry['layout'])}"
    if entry["memory"] is None:
        return [head, f"  cannot run: {entry['problem']}"]
    verdict = "fits" if entry["fits"] else f"does NOT fit: {entry['problem']}"
    lines = [head, f"  {verdict}", f"  {_memory_line(entry['memory'])}"]
    lines += _stages(entry.get("stages", []))
    return lines


def _label(layout: dict) -> str:
    vpp = f"x{layout['virtual']}" if layout["virtual"] else ""
    split = _split_label(layout["split"])
    split = f" split={split}" if split else ""
    return (
        f"TP{layout['tensor']} PP{layout['pipeline']}{vpp}{split} CP{layout['context']} DP{layout['data']} "
        f"mb{layout['micro_batch']} recompute={layout.get('recompute_label', layout['recompute'])} "
        f"distopt={'on' if layout['distributed_optimizer'] else 'off'}"
    )


def _layouts(plan: dict) -> list[str]:
    layouts, inputs = plan["layouts"], plan["inputs"]
    head = ["#"] + LAYOUT_HEAD + list(PART_HEADS) + ["MFU", "TFLOP/s", "step s", "days", "cost"]
    lines = [
        f"Layouts that fit: {layouts['feasible']} of {layouts['evaluated']} evaluated, fastest predicted step "
        f"first (peak memory per GPU at the most loaded stage; fits under {inputs['gpu']['usable_fraction']:.0%} "
        f"of {_gib(inputs['gpu']['memory_bytes'])} GiB; MFU and TFLOP/s per GPU predicted)",
    ]
    if layouts["best"]:
        lines += _table(head, [_candidate_row(entry, i + 1) for i, entry in enumerate(layouts["best"])])
        if plan.get("explain"):
            lines += ["", "Where each listed layout's step time goes (seconds per step; communication is what "
                      "overlap does not hide):"]
            lines += _table(["#"] + BREAKDOWN_HEAD,
                            [_breakdown_row(entry, i + 1) for i, entry in enumerate(layouts["best"])])
    else:
        lines.append("  none: see the rejected layouts below")
    shown = len(layouts["rejected_shown"])
    lines += ["", f"Layouts that do not fit or cannot run: {layouts['rejected']}, the fastest {shown}:"]
    if layouts["rejected_by"]:
        reasons = ", ".join(f"{key}: {count}" for key, count in layouts["rejected_by"].items())
        lines.append(f"  (rejected by {reasons})")
    for entry in layouts["rejected_shown"]:
        lines.append(f"  {_label(entry['layout'])}: {entry['problem']}")
        if "fix" in entry:
            fix = entry["fix"]
            if fix is None:
                lines.append("      no single change makes it fit")
            else:
                lines.append(
                    f"      fits with {fix['change']}: {_gib(fix['memory']['total'])} GiB, "
                    f"step {fix['timing']['step_seconds']:.2f} s"
                )
    return lines


def _cost(plan: dict) -> list[str]:
    best, inputs = plan["layouts"]["best"], plan["inputs"]
    if not best:
        return []
    entry = best[0]
    cost, timing = entry["cost"], entry["timing"]
    per_token = plan["flops"]["per_token"]["total"]
    peak = inputs["gpu"]["peak_flops"]
    parts = timing["breakdown"]
    shown = ", ".join(f"{name} {parts[key]:.2f}" for name, key in zip(BREAKDOWN_HEAD, BREAKDOWN_KEYS)
                      if parts[key] > 0)
    kernels = "kernels at the measured MFU " + f"{inputs['mfu']:.3f}" if inputs["mfu"] else "modelled kernels"
    lines = [
        f"Time and cost of the best layout ({_label(entry['layout'])})",
        f"  steps       = {inputs['tokens']:.4e} tokens / {inputs['global_batch_tokens']:,} tokens per step "
        f"({inputs['global_batch_size']} x {inputs['seq_length']}) = {cost['steps']:,}",
        f"  FLOPs       = {per_token:.4e} x {cost['tokens']:.4e} tokens = {cost['model_flops']:.4e}",
        f"  step time   = {shown} = {timing['step_seconds']:.2f} s ({kernels}; {timing['num_microbatches']} "
        f"micro-batches, bubble {timing['bubble']:.1%})",
        f"  MFU         = {timing['model_flops_per_step']:.4e} / ({timing['step_seconds']:.2f} s x {inputs['gpus']} "
        f"GPUs x {peak / 1e12:.1f} TFLOP/s) = {timing['mfu']:.3f} ({timing['tflops_per_gpu']:.0f} TFLOP/s and "
        f"{timing['tokens_per_second_per_gpu']:,.0f} tokens/s per GPU)",
        f"  throughput  = {cost['cluster_flops_per_second']:.4e} FLOP/s",
        f"  time        = {cost['model_flops']:.4e} / {cost['cluster_flops_per_second']:.4e} = "
        f"{cost['seconds']:.4e} s = {cost['days']:.1f} days",
        f"  GPU-hours   = {inputs['gpus']} x {cost['seconds'] / 3600:,.1f} h = {cost['gpu_hours']:,.0f}",
    ]
    if cost["dollars"] is not None:
        lines.append(
            f"  cost        = {cost['gpu_hours']:,.0f} GPU-hours x ${inputs['price_per_gpu_hour']:.2f} = "
            f"{_money(cost['dollars'])}"
        )
    else:
        lines.append("  cost        = give --price-per-gpu-hour for dollars")
    fields = entry.get("parallel_fields") or {}
    if fields:
        settings = ", ".join(f"parallel.{key}={value}" for key, value in fields.items())
        lines.append(f"  layer split: {settings} (megatron-core's uneven pipeline stages)")
    lines.append("  per-rank parameters of this layout:")
    lines += _stages(entry.get("stages", []))
    lines.append(
        f"  to log MFU against the same peak in `train`, set logging.peak_tflops_per_device: {peak / 1e12:g}"
    )
    return lines


def render(plan: dict) -> str:
    inputs = plan["inputs"]
    gpu = inputs["gpu"]
    title = (
        f"megatron-llm plan: {inputs['config'] or 'built-in defaults'} on {inputs['gpus']} x {gpu['description']} "
        f"({inputs['precision']}, {gpu['peak_flops'] / 1e12:.1f} TFLOP/s peak, {_gib(gpu['memory_bytes'])} GiB), "
        f"{inputs['tokens']:.4e} tokens, "
        + (f"kernels at measured MFU {inputs['mfu']:.2f}" if inputs["mfu"] else "step time modelled")
        + (", TP communication overlapped" if inputs["tp_comm_overlap"] else "")
    )
    sections = [[title], _parameters(plan), _flops(plan), _configured(plan), _layouts(plan), _cost(plan)]
    return "\n\n".join("\n".join(section) for section in sections if section) + "\n"
