"""What every bench module shares: where things are, and the progress log on stderr."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
FAUXQS_DIR = BENCH_DIR / "fauxqs"


def log(text: str) -> None:
    """Progress on stderr."""
    print(f"[bench] {text}", file=sys.stderr, flush=True)
