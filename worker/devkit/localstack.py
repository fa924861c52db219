"""Embedded LocalStack in host mode: no Docker, its own virtualenv, no orphans.

LocalStack pins a botocore that conflicts with aiobotocore's, so it lives in a virtualenv of its own
(built and reused by ``worker.devkit.localstack_venv``).

The server runs in a new session (its own process group) under a small watchdog bootstrap: it exits when
its stdin (a pipe only the parent holds) reaches EOF or when its parent pid changes, so even a SIGKILLed
parent leaves nothing behind. It serves on a socket the parent binds to 127.0.0.1 and hands over, so the
port cannot be lost to a race and is never exposed beyond loopback (``worker.devkit.localstack_child``).
This module starts, watches and stops that process. Only the standard library is used here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from worker.devkit.localstack_child import (
    _WATCHDOG,
    LISTEN_FD_ENV,
    RUN_DIR_ENV,
    SERVICES,
    _bind_loopback,
    _child_env,
)
from worker.devkit.localstack_errors import LocalStackError, _tail
from worker.devkit.localstack_venv import ensure_venv

DEFAULT_REGION = "us-east-1"
_STOP_GRACE_SECONDS = 10.0
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class LocalStackInstance:
    """A running embedded LocalStack: where to reach it and where it logs."""

    endpoint: str
    port: int
    pid: int
    log_path: Path


def _http(url: str, *, data: bytes | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/x-www-form-urlencoded"} if data is not None else {}
    request = urllib.request.Request(url, data=data, headers=headers)  # noqa: S310 - fixed http://127.0.0.1 URL
    try:
        with _NO_PROXY.open(request, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class EmbeddedLocalStack:
    """Start and stop one embedded LocalStack; a sync context manager yielding a LocalStackInstance."""

    def __init__(
        self,
        *,
        port: int | None = None,
        state_dir: Path | None = None,
        log_path: Path | None = None,
        startup_timeout: float = 90.0,
    ) -> None:
        self._port = port
        self._state_dir = state_dir
        self._log_path = log_path
        self._startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._run_dir: Path | None = None
        self._instance: LocalStackInstance | None = None
        self._lock = threading.Lock()

    @property
    def instance(self) -> LocalStackInstance | None:
        """The running instance, or None before start and after stop."""
        return self._instance

    def start(self) -> LocalStackInstance:
        """Install if needed, launch LocalStack, wait until healthy and warmed up; return the instance."""
        with self._lock:
            if self._proc is not None:
                raise LocalStackError("this EmbeddedLocalStack is already started")
            # Bind first: a taken port fails at once, before a possible one-minute install, and no one
            # can take the port between choosing it and LocalStack listening on it.
            with _bind_loopback(self._port or 0) as listener:
                python = ensure_venv()
                self._instance = self._launch(python, listener)
            return self._instance

    def _launch(self, python: Path, listener: socket.socket) -> LocalStackInstance:
        port = int(listener.getsockname()[1])
        self._run_dir = Path(tempfile.mkdtemp(prefix="worker-localstack-"))
        try:
            filesystem_root = self._state_dir or self._run_dir / "fs"
            filesystem_root.mkdir(parents=True, exist_ok=True)
            log_path = self._log_path or self._run_dir / "localstack.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            watchdog = self._run_dir / "watchdog.py"
            watchdog.write_text(_WATCHDOG, encoding="utf-8")
            env = _child_env(port, filesystem_root)
            env[LISTEN_FD_ENV] = str(listener.fileno())
            env[RUN_DIR_ENV] = str(self._run_dir)
            with log_path.open("wb") as log:
                self._proc = subprocess.Popen(  # noqa: S603 - our venv's python running our own script
                    [str(python), "-I", "-u", str(watchdog)],
                    stdin=subprocess.PIPE,  # held open, never written: EOF tells the watchdog we are gone
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=filesystem_root,
                    env=env,
                    start_new_session=True,
                    pass_fds=(listener.fileno(),),
                )
            listener.close()  # LocalStack owns the socket now; our copy would keep the port open after it
            instance = LocalStackInstance(
                endpoint=f"http://127.0.0.1:{port}", port=port, pid=self._proc.pid, log_path=log_path
            )
            self._wait_healthy(instance)
            self._warm_up(instance)
        except BaseException:
            self._stop_locked(graceful=False)  # a half-started LocalStack has nothing worth saving
            raise
        return instance

    def exit_status(self) -> int | None:
        """The LocalStack process's exit status if it has exited, else None (also None when not started)."""
        return None if self._proc is None else self._proc.poll()

    def _fail(self, instance: LocalStackInstance, why: str) -> LocalStackError:
        tail = _tail(instance.log_path)
        return LocalStackError(
            f"LocalStack (pid {instance.pid}) {why}; log {instance.log_path} ends with:\n{tail}"
        )

    def _wait_healthy(self, instance: LocalStackInstance) -> None:
        assert self._proc is not None  # noqa: S101 - set by _launch() just before
        deadline = time.monotonic() + self._startup_timeout
        last_error = "no answer yet"
        while True:
            code = self._proc.poll()
            if code is not None:
                raise self._fail(instance, f"exited with status {code} during start-up")
            try:
                # Our socket accepts from the start, so a request waits until LocalStack serves it.
                wait = min(2.0, max(0.1, deadline - time.monotonic()))
                status, body = _http(f"{instance.endpoint}/_localstack/health", timeout=wait)
                services = json.loads(body).get("services", {}) if status == 200 else {}
                states = {name: services.get(name) for name in SERVICES}
                last_error = f"HTTP {status}, services {states}"
            except (OSError, ValueError) as exc:
                states, last_error = {}, repr(exc)
            if states and all(state == "running" for state in states.values()):
                return
            failed = [name for name, state in states.items() if state == "error"]
            if failed:
                raise self._fail(instance, f"reports services in error: {', '.join(failed)}")
            if time.monotonic() >= deadline:
                raise self._fail(
                    instance, f"not healthy within {self._startup_timeout:g} s (last check: {last_error})"
                )
            time.sleep(0.2)

    def _warm_up(self, instance: LocalStackInstance) -> None:
        # The first request on a fresh FILESYSTEM_ROOT takes a few seconds; pay for it here.
        status, body = _http(
            f"{instance.endpoint}/", data=b"Action=ListQueues&Version=2012-11-05", timeout=30.0
        )
        if status != 200:
            raise self._fail(instance, f"warm-up ListQueues answered HTTP {status}: {body[:500]!r}")

    def stop(self) -> None:
        """Terminate the process group (SIGTERM, SIGKILL after 10 s) and remove temp state; idempotent."""
        with self._lock:
            self._stop_locked(graceful=True)

    def _stop_locked(self, *, graceful: bool) -> None:
        proc, self._proc, self._instance = self._proc, None, None
        if proc is not None:
            pgid = proc.pid  # session leader: its pid is the group id
            if graceful:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=_STOP_GRACE_SECONDS)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            proc.wait()
            deadline = time.monotonic() + 5.0
            while _group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.05)  # SIGKILLed members vanish as soon as their reaper collects them
            if proc.stdin is not None:
                proc.stdin.close()
        run_dir, self._run_dir = self._run_dir, None
        if run_dir is not None:
            shutil.rmtree(run_dir, ignore_errors=True)

    def __enter__(self) -> LocalStackInstance:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main_foreground(port: int | None = None) -> int:
    """Run LocalStack in the foreground for ``worker localstack`` until SIGINT or SIGTERM."""
    server = EmbeddedLocalStack(port=port)
    try:
        instance = server.start()  # Ctrl-C here raises KeyboardInterrupt; start() cleans up after itself
    except LocalStackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    stop_requested = threading.Event()

    def _request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    previous: dict[int, Any] = {
        sig: signal.signal(sig, _request_stop) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        print(
            f"LocalStack ready at {instance.endpoint}\n"
            f"export AWS_ENDPOINT_URL={instance.endpoint}\n"
            f"export AWS_DEFAULT_REGION={DEFAULT_REGION}\n"
            "export AWS_ACCESS_KEY_ID=test\n"
            "export AWS_SECRET_ACCESS_KEY=test",
            flush=True,
        )
        print(f"[localstack] pid {instance.pid}, log {instance.log_path}; Ctrl-C to stop", file=sys.stderr)
        while not stop_requested.wait(0.5):
            status = server.exit_status()
            if status is not None:
                tail = _tail(instance.log_path)
                print(
                    f"error: LocalStack exited with status {status}; log ends with:\n{tail}", file=sys.stderr
                )
                return 1
        print("[localstack] stopping", file=sys.stderr, flush=True)
        return 0
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
