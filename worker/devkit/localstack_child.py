"""What the embedded LocalStack's process is given: its watchdog bootstrap, environment and socket.

The server runs in a new session (its own process group) under a small watchdog bootstrap: it exits when
its stdin (a pipe only the parent holds) reaches EOF or when its parent pid changes, so even a SIGKILLed
parent leaves nothing behind. It serves on a socket the parent binds to 127.0.0.1 and hands over, so the
port cannot be lost to a race and is never exposed beyond loopback. Only the standard library is used here.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from worker.devkit.localstack_errors import LocalStackError

#: Services started eagerly; the worker, its tests and the demo need nothing else.
SERVICES = ("sqs", "sns", "s3", "events", "ssm", "sts")
#: The parent's pid, handed to the watchdog so a parent that died before the child started is noticed.
PARENT_PID_ENV = "WORKER_LOCALSTACK_PARENT_PID"
#: The temporary run directory (log, FILESYSTEM_ROOT by default) the watchdog removes if orphaned.
RUN_DIR_ENV = "WORKER_LOCALSTACK_RUN_DIR"
#: The inherited listening socket (bound by the parent to 127.0.0.1) that the gateway adopts.
LISTEN_FD_ENV = "WORKER_LOCALSTACK_LISTEN_FD"


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
