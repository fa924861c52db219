"""What every bench module shares: where things are, the progress log on stderr, and where results go."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
FAUXQS_DIR = BENCH_DIR / "fauxqs"


def log(text: str) -> None:
    """Progress on stderr."""
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def write_results(results: dict[str, Any], output: str | None, prefix: str) -> Path:
    """Write the results JSON to ``output``, or else to ``RESULTS_DIR/<prefix><UTC date>.json``; its path."""
    path = Path(output) if output else RESULTS_DIR / f"{prefix}{datetime.now(UTC):%Y-%m-%dT%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path
