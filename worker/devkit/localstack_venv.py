"""The embedded LocalStack's own virtualenv: pinned, built once under a file lock, reused after.

LocalStack pins a botocore that conflicts with aiobotocore's, so it lives in a virtualenv of its own,
built once from the committed pins (``localstack/host/requirements.txt``) under
``$WORKER_LOCALSTACK_HOME`` or ``${XDG_CACHE_HOME:-~/.cache}/resilient-sqs-worker/localstack``.
Only the standard library is used here.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import importlib.resources
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from worker.devkit.localstack_errors import LocalStackError, _tail

#: Written into a venv only after its install succeeded; holds the full sha256 of the pins.
MARKER_NAME = ".worker-localstack-installed"

_PINS_IN_REPO = Path(__file__).resolve().parents[2] / "localstack" / "host" / "requirements.txt"
_PINS_RESOURCE = "_data/localstack-host-requirements.txt"


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
