"""What `worker run` imports before its event loop starts: the engine and service, never the operator tools,
the development kit or the example handlers; and `import worker` alone loads none of the engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import worker

#: Run in a fresh interpreter: `worker run` up to anyio.run (replaced so nothing connects anywhere), then
#: the names of every module loaded so far.
RUN_UNTIL_LOOP = """
import json, sys
import anyio
loaded = []
def fake_run(func, *args):
    loaded.extend(sorted(sys.modules))
anyio.run = fake_run
from worker.cli import main
code = main(["run"])
print(json.dumps({"code": code, "modules": loaded}))
"""

#: Modules `worker run` must not load: other commands' code, the demo's, the docs generators'.
NOT_ON_THE_RUN_PATH = ("worker.devkit", "worker.ops", "worker.examples", "tools", "bench")


#: The settings `worker run` needs, pointing at a port where nothing listens.
RUN_SETTINGS = {
    "WORKER_QUEUE_URL": "http://127.0.0.1:9/000000000000/jobs",
    "WORKER_DLQ_URL": "http://127.0.0.1:9/000000000000/jobs-dlq",
    "WORKER_HANDLER": "tests.handlers:scripted",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _python(code: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WORKER_", "AWS_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    return {**env, **extra}


def test_worker_run_imports_no_operator_tools_devkit_or_examples() -> None:
    """Up to its event loop, `worker run` loads the service and engine and nothing of devkit/ops/examples."""
    env = _clean_env(**RUN_SETTINGS)
    report = json.loads(_python(RUN_UNTIL_LOOP, env).splitlines()[-1])
    assert report["code"] == 0
    modules = set(report["modules"])
    assert {"worker.service.app", "worker.engine.consumer", "worker.settings"} <= modules, "not the run path"
    strays = sorted(
        m for m in modules if m.split(".")[0] in NOT_ON_THE_RUN_PATH or m.startswith(NOT_ON_THE_RUN_PATH)
    )
    assert not strays, f"`worker run` imported {strays}"


def test_import_worker_loads_no_engine_and_every_public_name_still_resolves() -> None:
    """`import worker` loads only the version; each name of `worker.__all__` still imports on first use."""
    code = "import json, sys, worker; print(json.dumps(sorted(m for m in sys.modules if 'worker' in m)))"
    assert json.loads(_python(code, _clean_env())) == ["worker", "worker._version"]
    for name in worker.__all__:
        assert getattr(worker, name) is not None, name
    from worker import FailureRecord, Message, RetryLater  # the names handlers and tools import

    assert Message.__module__ == "worker.engine.message"
    assert FailureRecord.__module__ == "worker.deadletter.record"
    assert issubclass(RetryLater, worker.WorkerError)
    assert set(worker.__all__) <= set(dir(worker))


#: Run in a fresh interpreter: `worker run` with run_worker replaced by one that starts at once (nothing
#: connects anywhere), reporting the garbage collector's state during start-up and after.
RUN_WITH_GC_REPORT = """
import gc, json
import anyio
import worker.service.app as app
seen = {}
async def fake_run_worker(settings, *, task_status):
    seen["during_start"] = gc.isenabled()
    task_status.started(None)
    await anyio.sleep(0)
    seen["after_start"] = gc.isenabled()
    seen["frozen"] = gc.get_freeze_count()
app.run_worker = fake_run_worker
from worker.cli import main
code = main(["run"])
print(json.dumps({"code": code, **seen}))
"""


def test_worker_run_collects_no_garbage_while_starting_and_freezes_what_start_up_built() -> None:
    """`worker run` starts with garbage collection off, then freezes what start-up built and turns it on."""
    env = _clean_env(**RUN_SETTINGS)
    report = json.loads(_python(RUN_WITH_GC_REPORT, env).splitlines()[-1])
    assert report["code"] == 0
    assert report["during_start"] is False
    assert report["after_start"] is True
    assert report["frozen"] > 50_000  # the modules and settings start-up built, out of later collections
