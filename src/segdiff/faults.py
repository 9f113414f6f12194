"""Fault injection for the reliability tests (docs/reliability.md): end the process, or fail a write, at
a named point of the code. Off unless the environment variable SEGDIFF_FAULT is set; never set it in
normal use.

    SEGDIFF_FAULT=NAME[:N[:ACTION]][,NAME...]

fires at the N-th time (1-based, default 1) this process reaches `point(NAME)`. ACTION is `exit`
(default: `os._exit(FAULT_EXIT)`, so no exception handler, `finally` or atexit hook runs, as when a
process is killed) or `enospc` (raise OSError(ENOSPC), as when the disk is full).

Points: `atomic.written` (a file's temporary copy is written and flushed, not yet renamed over the
target), `checkpoint.staged` (all files of a checkpoint written to temporary names), `checkpoint.between`
(after each rename of a checkpoint's files), `train.step` (after an optimizer step), `predict.between`
(between the files of one image's prediction, binary or K-class), `predict.image` (after each image's prediction).
"""

from __future__ import annotations

import errno
import os
from collections import Counter

ENV = "SEGDIFF_FAULT"
FAULT_EXIT = 87  # the exit status of an injected kill
_hits: Counter = Counter()


def _parse(spec: str) -> dict[str, tuple[int, str]]:
    out = {}
    for part in filter(None, (s.strip() for s in spec.split(","))):
        name, _, rest = part.partition(":")
        count, _, action = rest.partition(":")
        out[name] = (int(count or 1), action or "exit")
    return out


def point(name: str) -> None:
    """A named point where a fault can be injected; a dictionary lookup when SEGDIFF_FAULT is unset."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    rule = _parse(spec).get(name)
    if rule is None:
        return
    _hits[name] += 1
    count, action = rule
    if _hits[name] != count:
        return
    if action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC) + f" (injected at {name})")
    if action != "exit":
        raise ValueError(f"{ENV}: unknown action {action!r} (exit, enospc)")
    os._exit(FAULT_EXIT)


def reset() -> None:
    """Forget the hit counts (tests that inject faults in-process)."""
    _hits.clear()
