"""The emulator the bench runs against (the embedded LocalStack, fauxqs, or a given ``--endpoint``), a
bench entry run on it in a temporary workdir, and the small pieces of plumbing around it: npm installs, free
ports, a proxy-free HTTP GET, and the sealed AWS environment every process here gets."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio

from bench.common import FAUXQS_DIR, ROOT, log

#: A bench's async entry: (args, endpoint, emulator description, emulator pid or None, workdir) -> results.
Entry = Callable[[argparse.Namespace, str, str, int | None, Path], Awaitable[dict[str, Any]]]

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """(status, body) of a GET without any proxy; (0, b"") when nothing answers."""
    try:
        with _NO_PROXY.open(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()
    except OSError:
        return 0, b""


def free_port() -> int:
    """A free loopback TCP port."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def npm_install(directory: Path) -> None:
    """``npm ci`` (or ``npm install`` without a lock) in ``directory`` when its node_modules is stale."""
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed")
    lock = directory / "package-lock.json"
    stamp = directory / "node_modules" / ".bench-installed"
    source = lock if lock.exists() else directory / "package.json"
    if stamp.exists() and stamp.stat().st_mtime >= source.stat().st_mtime:
        return
    command = "ci" if lock.exists() else "install"
    log(f"npm {command} in {directory.relative_to(ROOT)}")
    subprocess.run(
        [npm, command, "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=directory,
        check=True,
        stdin=subprocess.DEVNULL,
    )
    stamp.touch()


@contextlib.contextmanager
def emulator(kind: str, endpoint: str | None, workdir: Path) -> Iterator[tuple[str, str, int | None]]:
    """Yield (endpoint, description, pid or None) of a running emulator, stopped on exit unless given."""
    if endpoint:
        yield endpoint, f"existing endpoint {endpoint}", None
        return
    if kind == "localstack":
        from worker.devkit.localstack import EmbeddedLocalStack

        log("starting the embedded LocalStack (host mode)")
        with EmbeddedLocalStack(log_path=workdir / "localstack.log") as instance:
            version = _localstack_version()
            yield instance.endpoint, f"LocalStack {version} (host mode)", instance.pid
        return
    if kind == "fauxqs":
        with _fauxqs(workdir) as running:
            yield running
        return
    raise SystemExit(f"unknown emulator {kind!r}")


def run_on_emulator(args: argparse.Namespace, entry: Entry, prefix: str, detail: str = "") -> dict[str, Any]:
    """Run ``entry`` under anyio against ``args.emulator`` (or ``args.endpoint``), in a temporary workdir
    (``worker-<prefix>``, ``worker-bench-`` for the empty prefix) removed afterwards unless
    ``args.keep_workdir``; log the emulator with ``detail``; return the entry's results."""
    workdir = Path(tempfile.mkdtemp(prefix=f"worker-{prefix or 'bench-'}"))
    try:
        with emulator(args.emulator, args.endpoint, workdir) as (endpoint, description, pid):
            log(f"emulator: {description}; {detail}" if detail else f"emulator: {description}")
            return anyio.run(entry, args, endpoint, description, pid, workdir)
    finally:
        if args.keep_workdir:
            log(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def _fauxqs(workdir: Path) -> Iterator[tuple[str, str, int | None]]:
    """fauxqs (bench/fauxqs's npm package) on a free port, in its own process group."""
    npm_install(FAUXQS_DIR)
    node = FAUXQS_DIR / "node_modules" / ".bin" / "node"
    cli = FAUXQS_DIR / "node_modules" / "fauxqs" / "dist" / "cli.js"
    port = free_port()
    env = {**os.environ, "FAUXQS_PORT": str(port), "FAUXQS_LOGGER": "false", "FAUXQS_HOST": "localhost"}
    with (workdir / "fauxqs.log").open("wb") as out:
        proc = subprocess.Popen(
            [str(node), str(cli)], stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while http_get(f"{url}/health")[0] != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fauxqs did not start; see {workdir / 'fauxqs.log'}")
            time.sleep(0.1)
        version = json.loads((cli.parents[1] / "package.json").read_text())["version"]
        node_version = subprocess.run(
            [str(node), "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()
        yield url, f"fauxqs {version} (Node {node_version})", proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def _localstack_version() -> str:
    from worker.devkit.localstack_venv import requirements_path

    for line in requirements_path().read_text().splitlines():
        if line.startswith("localstack-core=="):
            return line.split("==", 1)[1].split(";")[0].strip()
    return "?"


def sealed_aws_env(endpoint: str, workdir: Path) -> dict[str, str]:
    """The AWS_* variables of every process here: the emulator, test credentials, no real account."""
    from urllib.parse import urlparse

    host = urlparse(endpoint).hostname or ""
    if host not in ("localhost", "127.0.0.1", "::1") and not host.startswith("127."):
        raise SystemExit(f"refusing a non-loopback endpoint: {endpoint}")
    empty = workdir / "aws-empty"
    empty.write_text("")
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_CONFIG_FILE": str(empty),
        "AWS_SHARED_CREDENTIALS_FILE": str(empty),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
