"""The embedded LocalStack launcher: install once, start healthy, stop clean, never leave orphans."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest

from worker.devkit import localstack_venv
from worker.devkit.localstack import EmbeddedLocalStack, LocalStackInstance
from worker.devkit.localstack_errors import LocalStackError
from worker.devkit.localstack_venv import MARKER_NAME, ensure_venv, requirements_path

REPO_ROOT = Path(__file__).resolve().parents[1]
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def _sqs(endpoint: str, **params: str) -> str:
    body = urllib.parse.urlencode({**params, "Version": "2012-11-05"}).encode()
    request = urllib.request.Request(  # noqa: S310 - the test's own http://127.0.0.1 endpoint
        f"{endpoint}/", data=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    with _NO_PROXY.open(request, timeout=30) as response:
        assert response.status == 200
        return str(response.read().decode())


def _live_group_members(pgid: int) -> list[int]:
    """Pids in process group ``pgid`` that are still running (zombies awaiting a reaper don't count)."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: ask the kernel about the group as a whole
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        # "pid (comm) state ppid pgrp ..."; comm may contain spaces and parentheses
        state, _ppid, pgrp = stat[stat.rindex(")") + 2 :].split()[:3]
        if int(pgrp) == pgid and state not in {"Z", "X"}:
            members.append(int(entry.name))
    return members


def _descendants(pid: int) -> dict[int, int]:
    """Map every descendant of ``pid`` to its process group (Linux only; empty elsewhere)."""
    parents: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry.name)] = (int(fields[1]), int(fields[2]))
    found: dict[int, int] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, (child_ppid, child_pgrp) in parents.items():
            if child_ppid == parent and child not in found:
                found[child] = child_pgrp
                frontier.append(child)
    return found


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP listener on ``port``, from /proc/net/tcp{,6} (hex as the kernel shows)."""
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, _remote, state = line.split()[1:4]
            address, _, hex_port = local.rpartition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                addresses.add(address)
    return addresses


def _env_with_repo() -> dict[str, str]:
    """This environment with the checkout first on PYTHONPATH, so a child imports this ``worker``."""
    paths = [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in paths if path)}


class _Lines:
    """A child's stdout, read line by line on a thread so each read can have a deadline."""

    def __init__(self, stream: IO[bytes], stderr_path: Path) -> None:
        self._queue: queue.Queue[str] = queue.Queue()
        self._stderr_path = stderr_path
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[bytes]) -> None:
        try:
            for raw in stream:
                self._queue.put(raw.decode().rstrip("\n"))
        except (OSError, ValueError):
            pass  # the test closed the pipe while tearing down
        self._queue.put("")  # EOF

    def next(self, timeout: float) -> str:
        """The next line, failing the test (with the child's stderr) on timeout or EOF."""
        try:
            line = self._queue.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no output within {timeout} s; child stderr:\n{self._stderr_path.read_text()}")
        if not line:
            pytest.fail(f"child closed stdout; its stderr:\n{self._stderr_path.read_text()}")
        return line


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.localstack
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ensure_venv_reuses_a_finished_install() -> None:
    """A second ensure_venv() reuses the installed venv: same python, marker untouched, well under 2 s."""
    python = ensure_venv()
    marker = python.parents[1] / MARKER_NAME
    before = marker.stat().st_mtime_ns

    started = time.monotonic()
    again = ensure_venv(quiet=True)
    elapsed = time.monotonic() - started

    assert again == python
    assert elapsed < 2.0
    assert marker.stat().st_mtime_ns == before
    assert python.parent.parent.name.startswith("venv-")
    assert requirements_path().is_file()


@pytest.fixture
def fake_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Point ensure_venv at a private home and tiny pins, with a build that only makes bin/python."""
    pins = tmp_path / "requirements.txt"
    pins.write_text("localstack-core==0.0.0-test\n")
    monkeypatch.setenv("WORKER_LOCALSTACK_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(localstack_venv, "requirements_path", lambda: pins)
    builds: list[Path] = []

    def build(target: Path, pins: Path, log_path: Path, *, prompt: str) -> None:
        builds.append(target)
        (target / "bin").mkdir(parents=True)
        (target / "bin" / "python").symlink_to(sys.executable)

    monkeypatch.setattr(localstack_venv, "_build_venv", build)
    return builds


def test_half_finished_install_is_redone(fake_install: list[Path], tmp_path: Path) -> None:
    """A venv dir without the marker (or a stale staging dir) is discarded and rebuilt, not reused."""
    home = tmp_path / "home"
    digest = hashlib.sha256(localstack_venv.requirements_path().read_bytes()).hexdigest()
    venv = home / f"venv-{digest[:12]}"
    (venv / "bin").mkdir(parents=True)
    (venv / "leftover-from-a-crash").write_text("x")
    stale = home / f".venv-{digest[:12]}.tmp-999999"
    stale.mkdir()

    python = ensure_venv(quiet=True)

    assert python == venv / "bin" / "python"
    assert len(fake_install) == 1
    assert (venv / MARKER_NAME).read_text().strip() == digest
    assert not (venv / "leftover-from-a-crash").exists()
    assert not stale.exists()
    assert list(home.glob(".venv-*")) == []
    ensure_venv(quiet=True)
    assert len(fake_install) == 1


def test_concurrent_installs_build_once(fake_install: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Two callers racing on a fresh home: one builds under the lock, the other waits and reuses it."""
    waiting = threading.Event()
    real_progress = localstack_venv._progress

    def progress(message: str, *, quiet: bool) -> None:
        if message.startswith("waiting for another process"):
            waiting.set()
        real_progress(message, quiet=True)

    monkeypatch.setattr(localstack_venv, "_progress", progress)
    real_build = localstack_venv._build_venv

    def slow_build(target: Path, pins: Path, log_path: Path, *, prompt: str) -> None:
        # Hold the lock until the other caller is provably blocked on it.
        assert waiting.wait(30), "second caller never waited for the lock"
        real_build(target, pins, log_path, prompt=prompt)

    monkeypatch.setattr(localstack_venv, "_build_venv", slow_build)
    results: list[Path] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            results.append(ensure_venv())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert len(results) == 2
    assert results[0] == results[1]
    assert len(fake_install) == 1


@pytest.mark.localstack
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_start_serves_sqs_and_stop_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Started LocalStack is healthy, serves SQS on loopback only, gets no AWS creds; stop() clears all."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "real-secret-must-not-leak")
    monkeypatch.setenv("AWS_PROFILE", "production")
    server = EmbeddedLocalStack()
    with server as inst:
        assert inst.endpoint == f"http://127.0.0.1:{inst.port}"
        with _NO_PROXY.open(f"{inst.endpoint}/_localstack/health", timeout=10) as response:
            health = json.load(response)
        assert {health["services"][name] for name in ("sqs", "sns", "s3", "events", "ssm", "sts")} == {
            "running"
        }

        created = _sqs(inst.endpoint, Action="CreateQueue", QueueName="launcher-test")
        url = f"http://127.0.0.1:{inst.port}/queue/us-east-1/000000000000/launcher-test"
        assert f"<QueueUrl>{url}</QueueUrl>" in created
        assert url in _sqs(inst.endpoint, Action="ListQueues")

        if Path("/proc").is_dir():
            assert _listening_addresses(inst.port) == {"0100007F"}  # 127.0.0.1 only, not 0.0.0.0
            environ = Path(f"/proc/{inst.pid}/environ").read_bytes().split(b"\0")
            assert not [var for var in environ if var.startswith(b"AWS_")]
            # Anything LocalStack spawns stays in its group, so stop() and the watchdog reach it.
            assert all(pgid == inst.pid for pgid in _descendants(inst.pid).values())
        assert os.getpgid(inst.pid) == inst.pid
        assert inst.log_path.is_file()
        assert server.instance == inst

    assert not _port_open(inst.port)
    assert _live_group_members(inst.pid) == []
    assert not inst.log_path.exists()  # the default run dir (log, FILESYSTEM_ROOT) is removed
    assert server.instance is None
    server.stop()  # idempotent


@pytest.mark.localstack
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_no_orphans_when_the_parent_is_sigkilled(tmp_path: Path) -> None:
    """SIGKILL of the process that started LocalStack still takes its whole group and temp dir away."""
    ensure_venv()  # install outside the child's read deadline
    code = (
        "from worker.devkit.localstack import EmbeddedLocalStack\n"
        "inst = EmbeddedLocalStack().start()\n"
        "print(inst.pid, inst.port, inst.log_path, flush=True)\n"
        "import time\n"
        "time.sleep(600)\n"
    )
    stderr_path = tmp_path / "parent.stderr"
    pid = 0
    with stderr_path.open("wb") as stderr:
        parent = subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=stderr, env=_env_with_repo()
        )
    try:
        assert parent.stdout is not None
        line = _Lines(parent.stdout, stderr_path).next(180)
        match = re.fullmatch(r"(\d+) (\d+) (.+)", line)
        assert match, f"unexpected line {line!r}; parent stderr:\n{stderr_path.read_text()}"
        pid, port, run_dir = int(match[1]), int(match[2]), Path(match[3]).parent
        assert _live_group_members(pid) == [pid]
        assert run_dir.is_dir()
        assert _port_open(port)

        parent.kill()
        parent.wait(10)

        _wait_for(lambda: _live_group_members(pid) == [], 30, f"LocalStack group {pid} to exit")
        assert not _port_open(port)
        assert not run_dir.exists()  # the watchdog removes the temp state its dead parent left behind
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        if parent.stdout is not None:
            parent.stdout.close()
        if pid and _live_group_members(pid):
            os.killpg(pid, signal.SIGKILL)  # only ever our own LocalStack, and only if the test failed


@pytest.mark.localstack
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_stdin_eof_alone_stops_localstack() -> None:
    """With the parent alive, EOF on LocalStack's stdin (e.g. the parent exec'd) takes its group down."""
    server = EmbeddedLocalStack()
    try:
        inst = server.start()
        proc = server._proc
        assert proc is not None
        assert proc.stdin is not None
        proc.stdin.close()
        _wait_for(lambda: proc.poll() is not None, 30, "LocalStack to exit on stdin EOF")
        _wait_for(lambda: _live_group_members(inst.pid) == [], 10, f"LocalStack group {inst.pid} to exit")
        assert not _port_open(inst.port)
    finally:
        server.stop()


@pytest.mark.localstack
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_foreground_prints_exports_and_stops_on_sigint(tmp_path: Path) -> None:
    """`worker localstack`'s main_foreground prints the endpoint and exports, then SIGINT stops it with 0."""
    ensure_venv()
    code = "import sys\nfrom worker.devkit.localstack import main_foreground\nsys.exit(main_foreground())\n"
    stderr_path = tmp_path / "foreground.stderr"
    with stderr_path.open("wb") as stderr:
        fg = subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=stderr, env=_env_with_repo()
        )
    pid = 0
    try:
        assert fg.stdout is not None
        output = _Lines(fg.stdout, stderr_path)
        lines = [output.next(180) for _ in range(5)]
        match = re.fullmatch(r"LocalStack ready at (http://127\.0\.0\.1:(\d+))", lines[0])
        assert match, lines
        endpoint, port = match[1], int(match[2])
        assert lines[1:] == [
            f"export AWS_ENDPOINT_URL={endpoint}",
            "export AWS_DEFAULT_REGION=us-east-1",
            "export AWS_ACCESS_KEY_ID=test",
            "export AWS_SECRET_ACCESS_KEY=test",
        ]
        assert "<ListQueuesResponse" in _sqs(endpoint, Action="ListQueues")
        # The pid line goes to stderr (a file), written independently of the stdout lines read above.
        deadline = time.monotonic() + 10
        while (pid_match := re.search(r"pid (\d+)", stderr_path.read_text())) is None:
            assert time.monotonic() < deadline, "no 'pid N' line on stderr within 10 s"
            time.sleep(0.05)
        assert pid_match
        pid = int(pid_match[1])

        fg.send_signal(signal.SIGINT)
        assert fg.wait(30) == 0
        assert _live_group_members(pid) == []
        assert not _port_open(port)
    finally:
        if fg.poll() is None:
            fg.kill()
            fg.wait(10)
        if fg.stdout is not None:
            fg.stdout.close()
        if pid and _live_group_members(pid):
            os.killpg(pid, signal.SIGKILL)  # only ever our own LocalStack, and only if the test failed


@pytest.mark.localstack
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_start_deadline_fails_clearly_and_cleans_up() -> None:
    """A start that misses its deadline raises with the pid and log tail, and leaves no process behind."""
    ensure_venv()
    server = EmbeddedLocalStack(startup_timeout=0.5)
    with pytest.raises(LocalStackError, match=r"not healthy within 0.5 s") as caught:
        server.start()
    message = str(caught.value)
    assert "ends with:" in message
    match = re.search(r"\(pid (\d+)\)", message)
    assert match
    assert _live_group_members(int(match[1])) == []
    assert server.instance is None


def test_explicit_port_in_use_is_refused_before_launch(fake_install: list[Path]) -> None:
    """Asking for a port something already listens on fails at once, naming it, before any install."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(LocalStackError, match=f"127.0.0.1:{port} is in use"):
            EmbeddedLocalStack(port=port).start()
    assert fake_install == []


def test_instance_is_a_frozen_record() -> None:
    """LocalStackInstance is the immutable contract the test harness and CLI read."""
    inst = LocalStackInstance(endpoint="http://127.0.0.1:1", port=1, pid=2, log_path=Path("/x"))
    with pytest.raises(AttributeError):
        inst.port = 3  # type: ignore[misc]
