"""moto's SQS server (``moto[server]``) in a subprocess on loopback: the suite's second SQS implementation."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

# Runs in moto's server subprocess as ``python -I -u -c <this>``: serves moto on the loopback socket the
# parent bound and handed over (no port race, never beyond loopback), and exits when its stdin (a pipe only
# the parent holds) reaches EOF, so even a SIGKILLed pytest leaves no server behind.
_MOTO_BOOTSTRAP = """\
import logging, os, threading
_listen_fd = int(os.environ.pop("TEST_MOTO_LISTEN_FD"))
_stdin = os.dup(0)
_null = os.open(os.devnull, os.O_RDONLY)
os.dup2(_null, 0)
os.close(_null)
def _exit_on_eof():
    try:
        while os.read(_stdin, 4096):
            pass
    finally:
        os._exit(0)
threading.Thread(target=_exit_on_eof, daemon=True).start()
logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
from werkzeug.serving import make_server
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
server = make_server(
    "127.0.0.1", 0, DomainDispatcherApplication(create_backend_app), threaded=True,
    request_handler=MotoRequestHandler, fd=_listen_fd,
)
print("moto listening on", server.server_address, flush=True)
server.serve_forever()
"""
_MOTO_START_SECONDS = 60.0
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class MotoInstance:
    """A running moto server: where to reach it and where it logs."""

    endpoint: str
    pid: int
    log_path: Path


class MotoServer:
    """moto's server (``moto[server]``) in a subprocess of its own, on a loopback port bound here.

    A subprocess rather than ``ThreadedMotoServer`` in this process: the in-process workers of the tests
    share this interpreter's GIL and event loop, and moto's request threads there would perturb their
    timing (backoff gaps, heartbeats, drain budgets); the worker subprocesses reach it over TCP either way;
    and a separate process is sealed off from this one (its imports, warnings filters, environment) and can
    be killed outright, like the embedded LocalStack.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._run_dir: Path | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> MotoInstance:
        """Start the server and wait until it answers HTTP; raise with its log tail if it does not."""
        self._run_dir = Path(tempfile.mkdtemp(prefix="worker-tests-moto-"))
        log_path = self._run_dir / "moto.log"
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.bind(("127.0.0.1", 0))
            listener.listen(128)
            port = listener.getsockname()[1]
            env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
            env["TEST_MOTO_LISTEN_FD"] = str(listener.fileno())
            env["MOTO_PORT"] = str(port)
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-u", "-c", _MOTO_BOOTSTRAP],
                stdin=subprocess.PIPE,
                stdout=self._log,
                stderr=self._log,
                env=env,
                pass_fds=(listener.fileno(),),
                start_new_session=True,
            )
        finally:
            listener.close()  # the child holds its own copy
        instance = MotoInstance(endpoint=f"http://127.0.0.1:{port}", pid=self._proc.pid, log_path=log_path)
        try:
            self._wait_answering(instance)
        except Exception:
            self.stop()
            raise
        return instance

    def _wait_answering(self, instance: MotoInstance) -> None:
        deadline = time.monotonic() + _MOTO_START_SECONDS
        assert self._proc is not None
        while True:
            if self._proc.poll() is not None:
                tail = instance.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"moto server exited {self._proc.returncode}: {tail}")
            try:
                with _NO_PROXY.open(f"{instance.endpoint}/moto-api/", timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # answered: up
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto server not answering after {_MOTO_START_SECONDS:.0f}s")
            time.sleep(0.1)

    def stop(self) -> None:
        """EOF on its stdin (it exits at once), then SIGTERM/SIGKILL if it lingers; remove its run dir."""
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(OSError):
                if proc.stdin is not None:
                    proc.stdin.close()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._run_dir = None
