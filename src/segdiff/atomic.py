"""Atomic file writes: write beside the target under a hidden temporary name, then rename over it.

A crash leaves either the old file or the new one, never a torn one (and at worst a hidden
`.NAME.partial-PID.EXT` file, ignored by every reader and removed by the next writer of NAME). The
temporary name keeps the suffix, so writers that infer the format from it (PIL, tifffile) work. A write
that fails (a full disk, a read-only folder) removes its temporary file, leaves the target as it was,
and raises a UserError naming the file.
"""

from __future__ import annotations

import errno
import glob
import os
from collections.abc import Callable
from pathlib import Path

from . import faults
from .errors import UserError


def temp_path(path: Path) -> Path:
    return path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")


def stale_temps(path: Path) -> list[Path]:
    """Temporary files left beside `path` by writers that were killed (any process id)."""
    path = Path(path)
    pattern = f".{glob.escape(path.stem)}.partial-*{glob.escape(path.suffix)}"
    return sorted(path.parent.glob(pattern)) if path.parent.is_dir() else []


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (the renames in it) to disk, where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_temp(path: Path | str, writer: Callable[[Path], None]) -> Path:
    """Call `writer(tmp)` on a temporary path beside `path` and flush it to disk; returns tmp (not renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        writer(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        faults.point("atomic.written")
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(
            f"{path}: cannot write ({exc.strerror or exc}); the previous version of this file, if any, is "
            "unchanged" + (" (the disk is full: free space and run again)" if exc.errno == errno.ENOSPC else "")
        ) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def atomic_write(path: Path | str, writer: Callable[[Path], None]) -> None:
    """Call `writer(tmp)` on a temporary path beside `path`, flush it to disk, then rename it to `path`."""
    path = Path(path)
    tmp = write_temp(path, writer)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode())
