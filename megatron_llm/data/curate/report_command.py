"""`megatron-llm curate-report OUTPUT`: what a curate run kept and removed, by stage, reason and input file,
and a check that every input record is accounted for (exit 1 if not)."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from megatron_llm.data.curate.pipeline.layout import Layout, read_json
from megatron_llm.errors import UsageError

MAX_MALFORMED_SHOWN = 20


def count_lines(path: Path) -> int:
    count = 0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            count += block.count(b"\n")
    return count


def load_run(output: Path) -> tuple[dict, list[dict], Layout]:
    summary_path = output / "curate.json"
    if not summary_path.is_file():
        raise UsageError(f"{output}: no curate.json; the curate run has not finished (rerun the same curate command)")
    summary = read_json(summary_path)
    layout = Layout(output, len(summary["parts"]))
    parts = []
    for index in range(layout.n_parts):
        path = layout.stats_file(index)
        if not path.is_file():
            raise UsageError(f"{path}: missing; the output directory is incomplete")
        parts.append(read_json(path))
    return summary, parts, layout


def stage_labels(config: dict) -> list[str]:
    labels, seen = [], Counter()
    for item in config["stages"]:
        (name,) = item
        seen[name] += 1
        labels.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return labels


def reconcile(parts: list[dict], layout: Layout, check_files: bool) -> list[str]:
    """Problems found; empty when input = malformed + removed + kept holds for every file (and the kept
    and rejects files hold exactly that many lines)."""
    problems = []
    for index, part in enumerate(parts):
        removed = sum(sum(reasons.values()) for reasons in part["removed"].values())
        malformed = sum(part["malformed"].values())
        if part["records"] != malformed + removed + part["kept"]:
            problems.append(
                f"{part['input']}: {part['records']} records != {malformed} malformed + {removed} removed "
                f"+ {part['kept']} kept"
            )
        if check_files:
            kept_lines = count_lines(layout.output_file(index))
            reject_lines = count_lines(layout.rejects_file(index))
            if kept_lines != part["kept"]:
                problems.append(f"{layout.output_file(index)}: {kept_lines} lines, stats say {part['kept']} kept")
            if reject_lines != malformed + removed:
                problems.append(
                    f"{layout.rejects_file(index)}: {reject_lines} lines, stats say {malformed + removed} removed"
                )
    return problems


def stage_table(labels: list[str], parts: list[dict]) -> list[dict]:
    """Per stage, in order: documents in, removed (by reason), out."""
    rows = []
    remaining = sum(p["documents"] for p in parts)
    for label in labels:
        reasons: Counter = Counter()
        for part in parts:
            reasons.update(part["removed"].get(label, {}))
        removed = sum(reasons.values())
        rows.append(
            {
                "stage": label,
                "in": remaining,
                "removed": removed,
                "out": remaining - removed,
                "reasons": dict(reasons.most_common()),
            }
        )
        remaining -= removed
    return rows


def _percent(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:5.1f}%" if whole else "    -"


def render(summary: dict, parts: list[dict], rows: list[dict], problems: list[str], checked: bool) -> str:
    records = sum(p["records"] for p in parts)
    malformed: Counter = Counter()
    for part in parts:
        malformed.update(part["malformed"])
    documents = sum(p["documents"] for p in parts)
    kept = sum(p["kept"] for p in parts)
    out = [
        f"input: {len(parts)} file(s), {records:,} records, {sum(malformed.values()):,} malformed, "
        f"{documents:,} documents",
        "",
    ]
    out.append(f"{'stage':<24}{'in':>12}{'removed':>12}{'':>8}{'out':>12}  reasons")
    for row in rows:
        reasons = ", ".join(f"{k} {v:,}" for k, v in row["reasons"].items()) or "-"
        out.append(
            f"{row['stage']:<24}{row['in']:>12,}{row['removed']:>12,}{_percent(row['removed'], row['in']):>8}"
            f"{row['out']:>12,}  {reasons}"
        )
    out.append(f"{'kept':<24}{'':>12}{'':>12}{_percent(kept, documents):>8}{kept:>12,}")
    out += ["", f"{'file':<40}{'records':>10}{'malformed':>10}{'removed':>10}{'kept':>10}  removed by stage"]
    for part in parts:
        by_stage = {row["stage"]: sum(part["removed"].get(row["stage"], {}).values()) for row in rows}
        detail = ", ".join(f"{stage} {n:,}" for stage, n in by_stage.items() if n) or "-"
        out.append(
            f"{part['input'][-40:]:<40}{part['records']:>10,}{sum(part['malformed'].values()):>10,}"
            f"{sum(by_stage.values()):>10,}{part['kept']:>10,}  {detail}"
        )
    counters: dict[str, Counter] = {}
    for part in parts:
        for stage, counts in part["counters"].items():
            counters.setdefault(stage, Counter()).update(counts)
    if counters:
        out.append("")
        for stage, counts in counters.items():
            shown = ", ".join(f"{k} {v:,}" for k, v in counts.most_common(12))
            out.append(f"{stage}: {shown}")
    if malformed:
        out += ["", "malformed lines (" + ", ".join(f"{k} {v:,}" for k, v in malformed.items()) + "):"]
        examples = [e for part in parts for e in part["malformed_examples"]]
        out += [f"  {e}" for e in examples[:MAX_MALFORMED_SHOWN]]
        if sum(malformed.values()) > MAX_MALFORMED_SHOWN:
            out.append("  ... every malformed line is in rejects/ with stage `input`")
    for name, units in summary.get("dedup", {}).items():
        if name.endswith(".clusters") and units:
            info = units[0]
            out.append(
                f"{name}: {info['edges']:,} edges, {info['clusters']:,} clusters, "
                f"{info['removed']:,} removed, largest cluster {info['largest_cluster']:,}"
            )
    out.append("")
    if problems:
        out.append("reconciliation FAILED:")
        out += [f"  {p}" for p in problems]
    else:
        what = "; kept and rejects files match line for line" if checked else ""
        out.append(f"reconciliation: OK (records = malformed + removed + kept for every file{what})")
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="megatron-llm curate-report",
        description="What a curate run kept and removed, by stage, reason and input file.",
    )
    parser.add_argument("output", help="the --output directory of a finished curate run")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-count", action="store_true", help="skip counting lines of the output files")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    summary, parts, layout = load_run(Path(args.output))
    rows = stage_table(stage_labels(summary["config"]), parts)
    problems = reconcile(parts, layout, check_files=not args.no_count)
    if args.json:
        print(json.dumps({"stages": rows, "files": parts, "problems": problems, "totals": summary["totals"]}, indent=1))
    else:
        print(render(summary, parts, rows, problems, checked=not args.no_count))
    return 1 if problems else 0
