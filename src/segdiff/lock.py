"""One writer per output: OS advisory locks (fcntl.flock) that vanish with the process holding them.

A killed process never leaves a stale lock: the kernel drops its locks when its files close. The lock
file holds the owner's process id and host, for the message another process gets. On platforms
without fcntl (Windows) locking is skipped. On network file systems flock is only as reliable as the
file system's lock support (NFS v4: yes; some older or FUSE mounts: no).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from .errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


class FileLock:
    """An exclusive, non-blocking lock on `path` (created if absent). `acquire()` -> bool."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.fd: int | None = None

    def acquire(self) -> bool:
        if fcntl is None:
            return True
        for attempt in range(10):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                break
            except FileNotFoundError:  # another process removed the (empty) lock folder in between: again
                if attempt == 9:
                    raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError:  # the file system does not support locks: go on unlocked
            os.close(fd)
            return True
        os.ftruncate(fd, 0)
        os.write(
            fd,
            f"pid {os.getpid()} on host {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(),
        )
        self.fd = fd
        return True

    def owner(self) -> str:
        """Who holds the lock, as its holder wrote it ("pid P on host H since T")."""
        try:
            text = self.path.read_text(errors="replace").strip()
        except OSError:
            text = ""
        return text or "a process that has not written its id yet"

    def release(self, unlink: bool = False) -> None:
        if self.fd is not None:
            if unlink:  # safe for per-output locks: whoever locks the old file next re-checks the output
                self.path.unlink(missing_ok=True)
            os.close(self.fd)  # closing drops the lock
            self.fd = None


def lock_run(run: Path) -> FileLock:
    """Lock RUN/.lock for a training run's life, or refuse with the other process's id."""
    lock = FileLock(Path(run) / ".lock")
    if not lock.acquire():
        raise UserError(
            f"{run}: another segdiff process ({lock.owner()}) is training this run folder; wait for it to "
            "finish or stop it, or choose another --out"
        )
    return lock
