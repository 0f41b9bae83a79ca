"""`megatron-llm slurm submit|status|template`: render the packaged pretrain.sbatch for a config, check,
submit, inspect; or hand out one of the packaged sbatch templates.

`submit` checks the config's parallel layout against nodes x GPUs (or processes) per node before anything
reaches SLURM, fills in the script's #SBATCH lines and settings block, keeps the rendered script and a
record of the submission under RUN_DIR/slurm/, and prints the job id. `status` reads that record, asks
SLURM about the job and shows the restarts the script logged and the last metrics line. `template NAME -o FILE`
copies a packaged template (pretrain, preprocess_array, curate_array, convert) out to edit or submit by hand.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

from megatron_llm.config.loader import load_config
from megatron_llm.config.validation import config_problems, layout_problems
from megatron_llm.errors import UsageError

SETTINGS_START = "# >>> settings"
SETTINGS_END = "# <<< settings"
REQUEUE_EXIT_CODE = 75  # the engine's "checkpoint saved, requeue me" (training.errors.REQUEUE_EXIT_CODE)


def template_names() -> list[str]:
    """The sbatch templates shipped inside the package, sorted."""
    folder = resources.files("megatron_llm.launch").joinpath("templates")
    entries = folder.iterdir() if folder.is_dir() else []
    names = sorted(entry.name for entry in entries if entry.name.endswith(".sbatch"))
    if not names:
        raise UsageError("this installation of megatron-llm has no sbatch templates (megatron_llm/launch/templates "
                         "is missing: the package was built without its package data); reinstall it")
    return names


def template_text(name: str) -> str:
    """An sbatch template shipped inside the package (`megatron_llm/launch/templates/NAME`)."""
    resource = resources.files("megatron_llm.launch").joinpath("templates", name)
    if "/" in name or not resource.is_file():
        raise UsageError(f"no sbatch template named {name!r}; the packaged ones are: {', '.join(template_names())}")
    return resource.read_text()


def template(name: str | None, output: Path | None) -> int:
    """Print the packaged templates' names, or one template (to stdout or, executable, to `output`)."""
    if name is None:
        print("\n".join(template_names()))
        return 0
    text = template_text(name)
    if output is None:
        print(text, end="")
        return 0
    if output.is_dir():
        raise UsageError(f"--output {output} is a directory; give the file to write, e.g. {output / name}")
    try:
        output.write_text(text)
    except OSError as error:
        raise UsageError(f"--output {output}: cannot write: {error.strerror}") from None
    output.chmod(0o755)
    return 0


def default_launcher() -> str:
    """This interpreter running the package: what the job's nodes should run if they share this filesystem."""
    return f"{shlex.quote(sys.executable)} -m megatron_llm"


def render_directives(template: str, values: dict[str, str | None]) -> str:
    """Replace the template's #SBATCH lines with its own merged with `values` (None removes an option)."""
    lines = template.splitlines()
    options: dict[str, str | None] = {}
    first = None
    kept = []
    for line in lines:
        if line.startswith("#SBATCH --"):
            name, _, value = line[len("#SBATCH --"):].partition("=")
            options[name.strip()] = value.strip()
            if first is None:
                first = len(kept)
                kept.append(None)
            continue
        kept.append(line)
    if first is None:
        raise UsageError("the sbatch template has no #SBATCH lines")
    options.update(values)
    block = [f"#SBATCH --{name}={value}" if value != "" else f"#SBATCH --{name}"
             for name, value in options.items() if value is not None]
    kept[first:first + 1] = block
    return "\n".join(kept) + "\n"


def render_settings(template: str, settings: list[str]) -> str:
    """Replace the block between the settings markers with `settings` (shell assignment lines)."""
    lines = template.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith(SETTINGS_START))
        end = next(i for i, line in enumerate(lines) if line.startswith(SETTINGS_END))
    except StopIteration:
        raise UsageError("the sbatch template has no settings block") from None
    lines[start + 1:end] = settings
    return "\n".join(lines) + "\n"


def render_pretrain(args: argparse.Namespace, template: str) -> str:
    """The pretrain script for one submission: resources in #SBATCH lines, config and run dir in settings."""
    run_dir = Path(args.run_dir).resolve()
    per_node = args.gpus_per_node or args.procs_per_node
    directives: dict[str, str | None] = {
        "job-name": args.job_name or run_dir.name,
        "nodes": str(args.nodes),
        "ntasks-per-node": str(per_node),
        "gpus-per-node": str(args.gpus_per_node) if args.gpus_per_node else None,
        "partition": args.partition,
        "time": args.time,
        "account": args.account,
        "signal": f"USR1@{args.signal_seconds}",
        "chdir": str(Path.cwd()),
        "output": str(run_dir / "slurm" / "slurm-%j.out"),
    }
    if args.cpus_per_task:
        directives["cpus-per-task"] = str(args.cpus_per_task)
    train_args = [item for override in args.overrides for item in ("--set", override)]
    settings = [
        f"CONFIG={shlex.quote(str(Path(args.config).resolve()))}",
        f"RUN_DIR={shlex.quote(str(run_dir))}",
        f"TRAIN_ARGS=({' '.join(shlex.quote(item) for item in train_args)})",
        f'MEGATRON_LLM="${{MEGATRON_LLM:-{args.launcher or default_launcher()}}}"',
        f'MAX_RESTARTS="${{MAX_RESTARTS:-{args.max_restarts}}}"',
        f'REQUEUE_EXIT_CODE="${{REQUEUE_EXIT_CODE:-{REQUEUE_EXIT_CODE}}}"',
    ]
    return render_settings(render_directives(template, directives), settings)


def check_layout(args: argparse.Namespace) -> None:
    """Load the config with its overrides and reject it unless it fits nodes x tasks per node."""
    config = load_config(args.config, args.overrides)
    per_node = args.gpus_per_node or args.procs_per_node
    world = args.nodes * per_node
    unit = "--gpus-per-node" if args.gpus_per_node else "--procs-per-node"
    problems = layout_problems(config, world) + config_problems(config)
    if problems:
        raise UsageError(f"{args.config}: does not fit --nodes {args.nodes} x {unit} {per_node} = {world} "
                         f"processes: " + "; ".join(problems))


def sbatch(script: Path) -> str:
    """Submit `script`; returns the job id."""
    if shutil.which("sbatch") is None:
        raise UsageError("sbatch not found on PATH: run `megatron-llm slurm submit` on a SLURM login node")
    result = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True)
    if result.returncode != 0:
        raise UsageError(f"sbatch rejected {script}: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout.strip().split(";")[0]


def submit(args: argparse.Namespace) -> int:
    if args.nodes < 1 or (args.gpus_per_node or args.procs_per_node) < 1:
        raise UsageError("--nodes and --gpus-per-node/--procs-per-node must be >= 1")
    check_layout(args)
    script_text = render_pretrain(args, template_text("pretrain.sbatch"))
    if args.dry_run:
        print(script_text, end="")
        return 0
    slurm_dir = Path(args.run_dir).resolve() / "slurm"
    slurm_dir.mkdir(parents=True, exist_ok=True)
    script = slurm_dir / "pretrain.sbatch"
    script.write_text(script_text)
    job_id = sbatch(script)
    record = {"job": job_id, "submitted": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "script": str(script), "config": str(Path(args.config).resolve()), "overrides": args.overrides,
              "nodes": args.nodes, "tasks_per_node": args.gpus_per_node or args.procs_per_node,
              "gpus_per_node": args.gpus_per_node}
    with open(slurm_dir / "jobs.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\n")
    print(job_id)
    return 0


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def job_fields(job_id: str) -> dict[str, str] | None:
    """`scontrol show job -o` as a dict, or None when SLURM no longer knows the job (or is unreachable)."""
    if shutil.which("scontrol") is None:
        return None
    result = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True)
    if result.returncode != 0 or not result.stdout.strip():
        return None
    fields = {}
    for token in result.stdout.split():
        key, sep, value = token.partition("=")
        if sep:
            fields[key] = value
    return fields


def status(run_dir: Path) -> int:
    run_dir = run_dir.resolve()
    jobs = _read_jsonl(run_dir / "slurm" / "jobs.jsonl")
    events = _read_jsonl(run_dir / "slurm" / "events.jsonl")
    if not jobs and not events:
        raise UsageError(f"{run_dir}: no SLURM job was submitted for this run directory "
                         "(no slurm/jobs.jsonl or slurm/events.jsonl)")
    job_id = jobs[-1]["job"] if jobs else events[-1]["job"]
    print(f"run dir:   {run_dir}")
    fields = job_fields(job_id)
    if fields is None:
        print(f"job:       {job_id} (no longer known to SLURM)")
    else:
        reason = fields.get("Reason", "None")
        print(f"job:       {job_id} {fields.get('JobState', '?')}"
              + (f" ({reason})" if reason not in ("None", "(null)") else "")
              + f", restarts {fields.get('Restarts', '?')}, run time {fields.get('RunTime', '?')}, "
              f"nodes {fields.get('NodeList', '?')}")
    mine = [event for event in events if event.get("job") == job_id]
    restarts = [event for event in mine if event.get("event") in ("preempted", "crashed")]
    print(f"restarts:  {len(restarts)}" + "".join(
        f"\n  {event['time']} run {event.get('restart', '?')} {event['event']} (exit {event.get('exit_code')})"
        for event in restarts))
    if mine:
        last = mine[-1]
        print(f"last event: {last['time']} run {last.get('restart', '?')} {last['event']}")
    metrics = [record for record in _read_jsonl(run_dir / "metrics.jsonl") if "loss" in record]
    print(f"last step: {json.dumps(metrics[-1]) if metrics else 'none logged yet'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megatron-llm slurm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    sub = commands.add_parser("submit", help="check the layout, render pretrain.sbatch and submit it")
    sub.add_argument("--config", required=True, help="YAML config")
    sub.add_argument("--run-dir", required=True, help="run directory (checkpoints, metrics, SLURM logs)")
    sub.add_argument("--nodes", type=int, required=True)
    per_node = sub.add_mutually_exclusive_group(required=True)
    per_node.add_argument("--gpus-per-node", type=int, help="GPUs per node; one task per GPU")
    per_node.add_argument("--procs-per-node", type=int, help="processes per node on CPU partitions (no GPUs)")
    sub.add_argument("--cpus-per-task", type=int, help="CPU cores per task (#SBATCH --cpus-per-task)")
    sub.add_argument("--partition")
    sub.add_argument("--time", help="time limit, e.g. 2-00:00:00")
    sub.add_argument("--account")
    sub.add_argument("--job-name", help="default: the run directory's name")
    sub.add_argument("--max-restarts", type=int, default=3, help="requeues after a crash (default 3)")
    sub.add_argument("--signal-seconds", type=int, default=180,
                     help="send USR1 this many seconds before the time limit to save and requeue (default 180)")
    sub.add_argument("--launcher", help="command the job runs for megatron-llm (default: this Python -m "
                     "megatron_llm; the MEGATRON_LLM environment variable overrides it at run time)")
    sub.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config field (repeatable); passed to every (re)start of the job")
    sub.add_argument("--dry-run", action="store_true", help="print the rendered script instead of submitting")
    show = commands.add_parser("status", help="the job, its restarts and the last metrics line")
    show.add_argument("run_dir", type=Path)
    copy = commands.add_parser("template", help="print or write a packaged sbatch template (list them without NAME)")
    copy.add_argument("name", nargs="?", metavar="NAME", help="e.g. preprocess_array.sbatch")
    copy.add_argument("-o", "--output", type=Path, help="write it to this file (default: print it)")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "submit":
        return submit(args)
    if args.command == "template":
        return template(args.name, args.output)
    return status(args.run_dir)
