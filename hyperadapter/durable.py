"""Crash-safe file writes, in one place: fsync, write-to-temp-then-rename, and swapping a finished
folder into place. A rename is durable only once its parent folder is synced, so every helper here
syncs it; a reader never sees a half-written file or folder, only the old one or the new one."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a folder's entries (renames into it), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same folder, fsynced, then renamed over it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(path.parent)


def swap_in_dir(tmp: Path, final: Path) -> None:
    """Move a complete folder `tmp` to `final` (same parent), replacing any folder there: the old one
    is renamed aside first and removed after, so `final` is never missing nor half-written. The
    caller syncs the parent (once for many swaps, if it likes)."""
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
