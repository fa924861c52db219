"""The soak's handler: tests.handlers:scripted, plus probe messages that report the worker's asyncio tasks.

The worker exposes no task count, and the soak must not change worker/ to get one: a handler runs on the
worker's own event loop, so a message ``{"probe": N}`` makes it append "N <tasks>" (``asyncio.all_tasks()``,
its own task included) to the file named by TEST_SOAK_PROBE.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from tests.handlers import scripted
from worker import Message


async def probed(message: Message) -> Any:
    """A probe message: journal the event loop's task count; anything else: ``scripted``."""
    doc = message.json()
    if isinstance(doc, dict) and "probe" in doc:
        tasks = len(asyncio.all_tasks())
        _append(os.environ["TEST_SOAK_PROBE"], f"{doc['probe']} {tasks}\n")
        return {"tasks": tasks}
    return await scripted(message)


def _append(path: str, line: str) -> None:
    """Append one whole line to the probe file (in the event loop, as the handlers' journals are)."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)


def read_probes(path: str | os.PathLike[str]) -> dict[int, int]:
    """Probe number -> task count, from whole lines of the probe file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    found: dict[int, int] = {}
    for line in text.split("\n")[:-1]:
        probe, _, tasks = line.partition(" ")
        if probe.isdigit() and tasks.isdigit():
            found[int(probe)] = int(tasks)
    return found
