"""``make dist``'s last step: the built wheel alone, installed in a clean virtualenv, must run.

    python tools/dist_check.py dist [--lock constraints/runtime.txt]

In a temporary directory: a new virtualenv, then ``pip install`` of the wheel and nothing else, its
dependencies resolved from the index under the runtime lock's versions. The installed set must be exactly the
lock (the wheel's closure is what the image ships), ``pip check`` clean, and ``worker --version`` (the wheel's
version) and ``worker run --help`` must exit 0, run from outside the source tree. Prints the artefacts' sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import venv
import zipfile
from pathlib import Path

from packaging.utils import canonicalize_name

sys.path.insert(0, str(Path(__file__).resolve().parent))
from audit import read_pins  # tools/audit.py: the one lock parser

ROOT = Path(__file__).resolve().parent.parent
#: What a fresh virtualenv holds before anything is installed in it.
BOOTSTRAP = frozenset({"pip", "setuptools", "wheel"})


class DistCheckError(Exception):
    """The built distribution does not install or run as it should."""


def artifacts(dist: Path) -> tuple[Path, Path]:
    """The one wheel and the one sdist in ``dist``."""
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        raise DistCheckError(f"{dist} must hold one wheel and one sdist, not {wheels + sdists}")
    return wheels[0], sdists[0]


def wheel_version(wheel: Path) -> str:
    """The version in the wheel's METADATA."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        for line in archive.read(name).decode().splitlines():
            if line.startswith("Version: "):
                return line.removeprefix("Version: ").strip()
    raise DistCheckError(f"{wheel.name} has no Version in its METADATA")


def run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Run one step; its stdout, or DistCheckError naming the step and its output."""
    result = subprocess.run(  # noqa: S603 - the fresh virtualenv's own pip and worker, fixed arguments
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    if result.returncode != 0:
        raise DistCheckError(
            f"`{' '.join(command)}` exited {result.returncode}:\n{result.stdout}{result.stderr}"
        )
    return result.stdout


def check(wheel: Path, lock: Path) -> None:
    """Install the wheel alone in a fresh virtualenv under the lock's versions, compare, and run it."""
    pins = read_pins(lock.read_text())
    version = wheel_version(wheel)
    with tempfile.TemporaryDirectory(prefix="dist-check-") as tmp:
        home = Path(tmp)
        venv.create(home / "venv", with_pip=True, clear=True)
        python = str(home / "venv" / "bin" / "python")
        # Versions only: pip's hash-checking mode would also demand a hash for the local wheel and pinned
        # requirements instead of the wheel's own ranges. The image installs the hashes (--require-hashes).
        constraints = home / "constraints.txt"
        constraints.write_text("".join(f"{p.name}=={p.version}\n" for p in pins.values()))
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV"}
        }
        pip = [python, "-m", "pip", "--disable-pip-version-check"]
        run([*pip, "install", "--quiet", "--constraint", str(constraints), str(wheel)], home, env)
        run([*pip, "check"], home, env)
        listed = json.loads(run([*pip, "list", "--format", "json"], home, env))
        installed = {canonicalize_name(d["name"]): d["version"] for d in listed}
        ours = installed.pop("resilient-sqs-worker", None)
        if ours != version:
            raise DistCheckError(f"resilient-sqs-worker installed at {ours}, the wheel is {version}")
        dependencies = {name: v for name, v in installed.items() if name not in BOOTSTRAP}
        locked = {name: pin.version for name, pin in pins.items()}
        if dependencies != locked:
            extra = sorted(set(dependencies) - set(locked))
            missing = sorted(set(locked) - set(dependencies))
            moved = sorted(n for n in set(locked) & set(dependencies) if locked[n] != dependencies[n])
            raise DistCheckError(
                f"the wheel's dependencies are not {lock.name}: not locked {extra}, locked but not needed "
                f"{missing}, other versions {moved}"
            )
        worker = str(home / "venv" / "bin" / "worker")
        printed = run([worker, "--version"], home, env).strip()
        if not printed.endswith(version):
            raise DistCheckError(f"`worker --version` printed {printed!r}, the wheel is {version}")
        run([worker, "run", "--help"], home, env)
        print(f"installed {wheel.name} alone: {len(dependencies)} dependencies at the lock's versions")
        print("pip check: no broken requirements")
        print(f"`worker --version` -> {printed!r}; `worker run --help` exits 0")


def main() -> int:
    """Check the distribution in the given directory; exit 1 with the reason when it fails."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("dist", type=Path, help="the directory `python -m build` wrote")
    parser.add_argument("--lock", type=Path, default=ROOT / "constraints" / "runtime.txt")
    args = parser.parse_args()
    try:
        wheel, sdist = artifacts(args.dist)
        check(wheel.resolve(), args.lock)
    except DistCheckError as exc:
        print(f"dist check FAILED: {exc}", file=sys.stderr)
        return 1
    for path in (wheel, sdist):
        print(f"{path.name}: {path.stat().st_size / 1024:.1f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
