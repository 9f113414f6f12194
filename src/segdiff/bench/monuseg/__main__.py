"""`python -m segdiff.bench.monuseg`: the MoNuSeg benchmark (segdiff/bench/monuseg/__init__.py)."""

from __future__ import annotations

import sys

from ...errors import UserError
from . import main

if __name__ == "__main__":
    try:
        main()
    except UserError as exc:
        sys.exit(f"error: {exc}")
    except KeyboardInterrupt:
        sys.exit(130)
