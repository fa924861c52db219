"""Embedded LocalStack in host mode: no Docker, its own virtualenv, no orphans.

LocalStack pins a botocore that conflicts with aiobotocore's, so it lives in a virtualenv of its own,
built once from the committed pins (``localstack/host/requirements.txt``) under
``$WORKER_LOCALSTACK_HOME`` or ``${XDG_CACHE_HOME:-~/.cache}/resilient-sqs-worker/localstack``.

The server runs in a new session (its own process group) under a small watchdog bootstrap: it exits when
its stdin (a pipe only the parent holds) reaches EOF or when its parent pid changes, so even a SIGKILLed
parent leaves nothing behind. It serves on a socket the parent binds to 127.0.0.1 and hands over, so the
port cannot be lost to a race and is never exposed beyond loopback. Only the standard library is used here.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import importlib.resources
import json
import os
import re
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any

from worker.errors import WorkerError

#: Services started eagerly; the worker, its tests and the demo need nothing else.
SERVICES = ("sqs", "sns", "s3", "events", "ssm", "sts")
#: Written into a venv only after its install succeeded; holds the full sha256 of the pins.
MARKER_NAME = ".worker-localstack-installed"
#: The parent's pid, handed to the watchdog so a parent that died before the child started is noticed.
PARENT_PID_ENV = "WORKER_LOCALSTACK_PARENT_PID"
#: The temporary run directory (log, FILESYSTEM_ROOT by default) the watchdog removes if orphaned.
RUN_DIR_ENV = "WORKER_LOCALSTACK_RUN_DIR"
#: The inherited listening socket (bound by the parent to 127.0.0.1) that the gateway adopts.
LISTEN_FD_ENV = "WORKER_LOCALSTACK_LISTEN_FD"
DEFAULT_REGION = "us-east-1"

_PINS_IN_REPO = Path(__file__).resolve().parents[2] / "localstack" / "host" / "requirements.txt"
_PINS_RESOURCE = "_data/localstack-host-requirements.txt"
_STOP_GRACE_SECONDS = 10.0
_LOG_TAIL_BYTES = 4000
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# Runs inside the LocalStack venv's interpreter as ``python -I -u <run dir>/watchdog.py``. A daemon
# thread watches a private copy of stdin for EOF and the parent pid for a change; on either it
# terminates the whole process group (SIGTERM, then SIGKILL after 5 s). The main thread runs
# LocalStack as ``python -m localstack.runtime.main`` would. LocalStack's twisted gateway ignores the
# host of an IPv4 GATEWAY_LISTEN and binds 0.0.0.0, so the bootstrap makes it adopt the loopback
# socket the parent bound instead (which also leaves no window for anyone to take the port).
_WATCHDOG = """\
import atexit, os, runpy, shutil, signal, socket, sys, threading, time
_parent = int(os.environ.pop("WORKER_LOCALSTACK_PARENT_PID", "0")) or os.getppid()
_run_dir = os.environ.pop("WORKER_LOCALSTACK_RUN_DIR", "")
_orphaned = threading.Event()
def _remove_run_dir():
    if _orphaned.is_set() and _run_dir:  # the parent that would have removed it is gone
        shutil.rmtree(_run_dir, ignore_errors=True)
atexit.register(_remove_run_dir)
_fd = os.dup(0)
_null = os.open(os.devnull, os.O_RDONLY)
os.dup2(_null, 0)
os.close(_null)
_gone = threading.Event()
def _read_until_eof():
    try:
        while os.read(_fd, 4096):
            pass
    except OSError:
        pass
    _gone.set()
def _watch():
    while not _gone.wait(0.5):
        if os.getppid() != _parent:
            break
    _orphaned.set()
    pgid = os.getpgid(0)
    try:
        os.killpg(pgid, signal.SIGTERM)
        time.sleep(5)
        _remove_run_dir()
        os.killpg(pgid, signal.SIGKILL)
    finally:
        os._exit(1)
def _adopt_gateway_socket():
    from twisted.internet import defer, endpoints
    fd = int(os.environ.pop("WORKER_LOCALSTACK_LISTEN_FD"))
    gateway_port = int(os.environ["GATEWAY_LISTEN"].rpartition(":")[2])
    base = endpoints.TCP4ServerEndpoint
    class LoopbackTCP4ServerEndpoint(base):
        def __init__(self, reactor, port, backlog=50, interface=""):
            super().__init__(reactor, port, backlog, interface or "127.0.0.1")
        def listen(self, factory):
            nonlocal fd
            if self._port != gateway_port or fd < 0:
                return super().listen(factory)
            adopted, fd = fd, -1
            def adopt():
                try:
                    os.set_blocking(adopted, False)  # twisted's accept loop requires it
                    return self._reactor.adoptStreamPort(adopted, socket.AF_INET, factory)
                finally:
                    os.close(adopted)
            return defer.execute(adopt)
    endpoints.TCP4ServerEndpoint = LoopbackTCP4ServerEndpoint
threading.Thread(target=_read_until_eof, name="stdin-eof", daemon=True).start()
threading.Thread(target=_watch, name="parent-watchdog", daemon=True).start()
_adopt_gateway_socket()
sys.argv = ["localstack.runtime.main"]
runpy.run_module("localstack.runtime.main", run_name="__main__", alter_sys=True)
"""


class LocalStackError(WorkerError):
    """The embedded LocalStack could not be installed, started or reached."""


@dataclass(frozen=True)
class LocalStackInstance:
    """A running embedded LocalStack: where to reach it and where it logs."""

    endpoint: str
    port: int
    pid: int
    log_path: Path


def _progress(message: str, *, quiet: bool) -> None:
    if not quiet:
        print(f"[localstack] {message}", file=sys.stderr, flush=True)


def home_dir() -> Path:
    """Return the directory holding the LocalStack virtualenvs (created lazily)."""
    explicit = os.environ.get("WORKER_LOCALSTACK_HOME")
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "resilient-sqs-worker" / "localstack"


def requirements_path() -> Path:
    """Return the LocalStack pins file: the repo's copy first, else the one packaged with the wheel."""
    if _PINS_IN_REPO.is_file():
        return _PINS_IN_REPO
    try:
        resource = importlib.resources.files("worker").joinpath(_PINS_RESOURCE)
        data = resource.read_bytes()
    except (FileNotFoundError, ModuleNotFoundError, NotADirectoryError, OSError) as exc:
        raise LocalStackError(
            f"LocalStack pins not found at {_PINS_IN_REPO} nor as package data worker/{_PINS_RESOURCE}"
        ) from exc
    if isinstance(resource, Path):
        return resource
    # Package data inside a zip: materialise it once, content-addressed, next to the venvs.
    copy = home_dir() / f"requirements-{hashlib.sha256(data).hexdigest()[:12]}.txt"
    if not copy.is_file() or copy.read_bytes() != data:
        copy.parent.mkdir(parents=True, exist_ok=True)
        partial = copy.with_suffix(f".tmp-{os.getpid()}")
        partial.write_bytes(data)
        partial.replace(copy)
    return copy


def _pinned_version(pins: bytes) -> str:
    found = re.search(rb"^localstack-core==([^\s;#]+)", pins, re.MULTILINE)
    return found.group(1).decode() if found else "(unpinned)"


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _is_installed(venv: Path, digest: str) -> bool:
    try:
        marker = (venv / MARKER_NAME).read_text(encoding="utf-8").strip()
    except OSError:
        return False
    return marker == digest and os.access(_venv_python(venv), os.X_OK)


@contextlib.contextmanager
def _install_lock(path: Path, *, quiet: bool) -> Iterator[None]:
    with path.open("a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            _progress(f"waiting for another process to finish installing ({path})", quiet=quiet)
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _run_logged(argv: list[str], log: IO[bytes], what: str, log_path: Path) -> None:
    log.write(f"$ {' '.join(argv)}\n".encode())
    log.flush()
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, check=False)  # noqa: S603
    if result.returncode != 0:
        log.flush()
        raise LocalStackError(f"{what} failed (exit {result.returncode}); see {log_path}:\n{_tail(log_path)}")


def _build_venv(target: Path, pins: Path, log_path: Path, *, prompt: str) -> None:
    """Create a virtualenv at ``target`` and install the pins into it (no marker, no rename)."""
    with log_path.open("wb") as log:
        _run_logged(
            [sys.executable, "-m", "venv", "--prompt", prompt, str(target)],
            log,
            "creating the LocalStack venv",
            log_path,
        )
        pip = [str(_venv_python(target)), "-m", "pip", "install", "--disable-pip-version-check"]
        _run_logged([*pip, "-r", str(pins)], log, "installing LocalStack", log_path)


def _relocate(staging: Path, final: Path) -> None:
    """Point the staged venv's scripts (shebangs, activate) and pyvenv.cfg at its final path."""
    old_b, new_b = os.fsencode(staging), os.fsencode(final)
    candidates = [staging / "pyvenv.cfg", *(staging / "bin").iterdir()]
    for path in candidates:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > 1_000_000:
            continue
        data = path.read_bytes()
        if old_b in data:
            path.write_bytes(data.replace(old_b, new_b))


def ensure_venv(*, quiet: bool = False) -> Path:
    """Build (once, under a file lock) or reuse the LocalStack virtualenv; return its python executable."""
    pins = requirements_path()
    data = pins.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    home = home_dir()
    venv = home / f"venv-{digest[:12]}"
    if _is_installed(venv, digest):
        return _venv_python(venv)

    home.mkdir(parents=True, exist_ok=True)
    with _install_lock(home / f"venv-{digest[:12]}.lock", quiet=quiet):
        if _is_installed(venv, digest):  # another process finished while we waited
            return _venv_python(venv)
        # We hold the lock: anything half-built for these pins is a leftover of a crashed install.
        for stale in home.glob(f".venv-{digest[:12]}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if venv.exists():
            _progress(f"removing incomplete install {venv}", quiet=quiet)
            shutil.rmtree(venv)
        staging = home / f".venv-{digest[:12]}.tmp-{os.getpid()}"
        log_path = home / f"install-{digest[:12]}.log"
        _progress(
            f"installing LocalStack {_pinned_version(data)} into {venv} (first run, ~1 min; log: {log_path})",
            quiet=quiet,
        )
        started = time.monotonic()
        try:
            _build_venv(staging, pins, log_path, prompt=venv.name)
            _relocate(staging, venv)
            (staging / MARKER_NAME).write_text(digest + "\n", encoding="utf-8")
            staging.rename(venv)  # atomic: the venv appears complete, marker included, or not at all
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _progress(f"LocalStack installed in {time.monotonic() - started:.0f} s", quiet=quiet)
    return _venv_python(venv)


def _tail(path: Path, limit: int = _LOG_TAIL_BYTES) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"(log unavailable: {exc})"
    return ("..." if size > limit else "") + text


def _bind_loopback(port: int) -> socket.socket:
    """Bind and listen on 127.0.0.1:``port`` (0 picks a free one); LocalStack adopts this very socket."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a server does: TIME_WAIT is fine
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise LocalStackError(f"cannot start LocalStack: 127.0.0.1:{port} is in use ({exc})") from exc
    return sock


def _child_env(port: int, filesystem_root: Path) -> dict[str, str]:
    # No AWS credentials or profiles (LocalStack must never see the real account), no Python or
    # LocalStack settings from the caller (they could point it at the project's sources or LocalStack Pro).
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "PYTHON", "LOCALSTACK_"))
        and key not in {"VIRTUAL_ENV", "SERVICES", "GATEWAY_LISTEN", "FILESYSTEM_ROOT"}
    }
    env.update(
        GATEWAY_LISTEN=f"127.0.0.1:{port}",
        LOCALSTACK_HOST=f"127.0.0.1:{port}",
        SERVICES=",".join(SERVICES),
        EAGER_SERVICE_LOADING="1",
        DNS_ADDRESS="0",
        DISABLE_EVENTS="1",
        OVERRIDE_IN_DOCKER="0",
        SKIP_SSL_CERT_DOWNLOAD="1",
        FILESYSTEM_ROOT=str(filesystem_root),
        SQS_ENDPOINT_STRATEGY="path",
        GATEWAY_SERVER="twisted",  # the server whose listening socket the bootstrap hands over
        PYTHONUNBUFFERED="1",
    )
    env[PARENT_PID_ENV] = str(os.getpid())
    return env


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
