"""Full disks and unwritable directories, reported as one line instead of a traceback.

`output_error(exc, what)` turns ENOSPC / EDQUOT / EROFS / EACCES / EPERM into a UsageError (exit 2) naming
the path and what was being written; `free_bytes(path)` is the space left on the file system holding it.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from megatron_llm.errors import UsageError

OUTPUT_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def output_error(exc: BaseException, what: str, path: str | os.PathLike | None = None) -> UsageError | None:
    """A one-line UsageError for an OSError that means "cannot write here", else None."""
    while exc is not None and not (isinstance(exc, OSError) and exc.errno in OUTPUT_ERRNOS):
        exc = exc.__cause__ or exc.__context__
    if exc is None:
        return None
    where = exc.filename or path or "?"
    return UsageError(f"{where}: {OUTPUT_ERRNOS[exc.errno]} while writing {what}")


def free_bytes(path: str | os.PathLike) -> int:
    """Bytes available to this user on the file system of `path` (or of its nearest existing parent)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free
