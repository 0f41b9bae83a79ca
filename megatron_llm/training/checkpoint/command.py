"""`megatron-llm checkpoint ls RUN` and `megatron-llm checkpoint verify PATH`: inspect checkpoints offline.

Neither needs torch.distributed or megatron-core: they read `megatron_llm.json` and the files it lists.
`ls` checks sizes only and says "unverified" for a complete checkpoint (`--verify` hashes). `verify` also
reads `.metadata` and `common.pt` through the allow-list of `safe_pickle`. The checksums detect corruption,
not tampering: whoever can replace a file can rewrite its recorded sum.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from megatron_llm.errors import UsageError
from megatron_llm.training.checkpoint.format import (
    METADATA,
    TRACKER,
    CheckpointEntry,
    list_checkpoints,
    read_metadata,
    read_tracker,
    resolve_checkpoint,
    step_of,
    verify_directory,
)

EXIT_DAMAGED = 1


def _root_of(path: Path) -> Path:
    """A run directory (with `checkpoints/`), a checkpoint root, or an iter directory's root."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such file or directory")
    if (path / "checkpoints").is_dir() and not (path / TRACKER).exists():
        return path / "checkpoints"
    if step_of(path) is not None:
        return path.parent
    return path


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{size} B"
        value /= 1024
    return f"{size} B"


def _layout(layout: dict | None) -> str:
    if not layout:
        return "-"
    vpp = f" VPP={layout['virtual_pipeline']}" if layout.get("virtual_pipeline") else ""
    return f"TP={layout['tensor']} PP={layout['pipeline']}{vpp} DP={layout['data']}"


def _status(entry: CheckpointEntry, verified: dict[Path, list[str]] | None) -> str:
    """INCOMPLETE (a listed file is missing or has the wrong size), else DAMAGED/verified after checksums
    (`--verify`), else unverified: sizes match, but nothing was hashed."""
    if not entry.complete:
        return "INCOMPLETE"
    if verified is None:
        return "unverified"
    return "DAMAGED" if verified[entry.path] else "verified"


def _row(entry: CheckpointEntry, status: str) -> str:
    latest = " (latest)" if entry.latest else ""
    samples = "-" if entry.consumed_samples is None else str(entry.consumed_samples)
    return (f"{entry.path.name:<16} {entry.step:>8} {_layout(entry.layout):<22} {samples:>10} "
            f"{_human(entry.size_bytes):>10}  {status}{latest}  {','.join(entry.contents)}")


def cmd_ls(args: argparse.Namespace) -> int:
    root = _root_of(args.run)
    entries = list_checkpoints(root)
    verified = {e.path: verify_directory(e.path, deep=True) for e in entries if e.complete} if args.verify else None
    if args.json:
        print(json.dumps([{**vars(e), "path": str(e.path), "status": _status(e, verified)} for e in entries],
                         indent=1))
        return EXIT_DAMAGED if verified and any(verified.values()) else 0
    if not entries:
        print(f"{root}: no checkpoints")
        return 0
    print(f"{root} (tracker: {read_tracker(root)})")
    print(f"{'directory':<16} {'step':>8} {'layout':<22} {'samples':>10} {'size':>10}  status  contents")
    for entry in entries:
        print(_row(entry, _status(entry, verified)))
    return EXIT_DAMAGED if verified and any(verified.values()) else 0


def cmd_verify(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if not path.exists():
        raise UsageError(f"{path}: no such file or directory")
    directory = resolve_checkpoint(_root_of(path) if step_of(path) is None and not (path / METADATA).exists()
                                   else path)
    problems = verify_directory(directory, deep=not args.quick)
    if not problems:
        from megatron_llm.training.checkpoint.safe_pickle import check_checkpoint_pickles

        check_checkpoint_pickles(directory)  # a crafted metadata file is refused here without running
    if problems:
        for problem in problems:
            print(f"DAMAGED {problem}")
        print(f"{directory}: {len(problems)} problem(s); do not load it")
        return EXIT_DAMAGED
    metadata = read_metadata(directory)
    print(f"{directory}: OK, step {metadata.get('step')}, {_layout(metadata.get('layout'))}, "
          f"{len(metadata.get('files', {}))} files {'size-checked' if args.quick else 'checksummed'}, "
          f"contents {','.join(metadata.get('contents', []))}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megatron-llm checkpoint", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    ls = sub.add_parser("ls", help="list a run's checkpoints: step, layout, samples, size, completeness")
    ls.add_argument("run", help="run directory, checkpoint root (checkpoint.dir) or mirror directory")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.add_argument("--verify", action="store_true", help="checksum every file (otherwise complete checkpoints "
                    "are listed as 'unverified': sizes match, contents not checked)")
    ls.set_defaults(func=cmd_ls)
    verify = sub.add_parser("verify", help="check every file of a checkpoint against its recorded size and "
                            "checksum; exit 1 if damaged")
    verify.add_argument("path", help="an iter_* directory, or a root/run directory (its latest checkpoint)")
    verify.add_argument("--quick", action="store_true", help="sizes only, no checksums")
    verify.set_defaults(func=cmd_verify)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
