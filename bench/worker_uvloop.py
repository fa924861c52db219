"""``worker run`` on uvloop: the same entry point, with uvloop's event loop policy installed first.

The benchmark's ``worker-uvloop`` consumer (needs ``pip install uvloop``): it measures what the optional
uvloop extra would give before ``worker run`` selects uvloop by itself.
"""

from __future__ import annotations

import asyncio
import sys

import uvloop

from worker.cli import main

if __name__ == "__main__":
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    sys.exit(main(["run"]))
