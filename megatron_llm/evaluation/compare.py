"""`evaluate --compare OTHER.json`: our scores next to another model's, task by task and metric by metric.

OTHER.json is the `--json` output of `megatron-llm evaluate` (e.g. on an imported open model) or an
lm-evaluation-harness results file (`{"results": {task: {"acc,none": ...}}}`).
"""

from __future__ import annotations

import json
from pathlib import Path

from megatron_llm.errors import UsageError

_SKIP = {"alias", "n", "samples", "num_fewshot"}


def flatten(output: dict) -> dict[tuple[str, str], float]:
    """(task, metric) -> value from either of the two layouts."""
    scores: dict[tuple[str, str], float] = {}
    results = output.get("results")
    if isinstance(results, dict):  # lm-evaluation-harness
        for task, metrics in results.items():
            for key, value in metrics.items():
                name, _, flt = key.partition(",")
                if name in _SKIP or "stderr" in name or not isinstance(value, (int, float)):
                    continue
                scores[(task, name if flt in ("", "none") else f"{name} ({flt})")] = float(value)
        return scores
    if not isinstance(results, list):
        raise ValueError("expected `results` as a list (megatron-llm evaluate --json) or a mapping (lm_eval)")
    for result in results:
        task = result["task"]
        metrics = result.get("metrics")
        if metrics is None:
            metrics = {k: result[k] for k in ("perplexity", "nll", "acc", "acc_norm") if k in result}
        for name, value in metrics.items():
            if isinstance(value, (int, float)):
                scores[(task, name)] = float(value)
        chance = result.get("chance")
        if isinstance(chance, (int, float)):
            scores[(task, "chance")] = float(chance)
    return scores


def load_other(path: str | Path) -> dict[tuple[str, str], float]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise UsageError(f"--compare {path}: cannot read: {error.strerror or error}") from error
    except json.JSONDecodeError as error:
        raise UsageError(f"--compare {path}:{error.lineno}: invalid JSON: {error.msg}") from error
    try:
        return flatten(data)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise UsageError(f"--compare {path}: not an evaluate or lm_eval results file ({error})") from error


def comparison_table(ours: dict[tuple[str, str], float], other: dict[tuple[str, str], float], our_name: str,
                     other_name: str) -> str:
    """One row per (task, metric) either side has; `-` where a side lacks it; the difference when both do."""
    rows = [("task", "metric", our_name, other_name, "difference")]
    for key in sorted(set(ours) | set(other)):
        a, b = ours.get(key), other.get(key)
        diff = f"{a - b:+.4f}" if a is not None and b is not None else ""
        rows.append((key[0], key[1], "-" if a is None else f"{a:.4f}", "-" if b is None else f"{b:.4f}", diff))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)
