"""The locks (constraints/*.txt, ``make lock``): complete, hashed for the image, in step with pyproject."""

from __future__ import annotations

import re
import tomllib
from functools import cache
from importlib import metadata
from types import ModuleType
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.test_deploy_docker import DOCKERFILE, parse_dockerfile
from tests.test_deploy_support import ROOT
from tests.test_docs import _load_tool

RUNTIME_LOCK = ROOT / "constraints" / "runtime.txt"
DEV_LOCK = ROOT / "constraints" / "dev.txt"
#: The environment both locks are made for (make lock): the image's Python on Linux.
LOCK_ENVIRONMENT = {"python_version": "3.11", "python_full_version": "3.11.14", "extra": ""}


@cache
def audit() -> ModuleType:
    """tools/audit.py, whose ``read_pins`` is the one lock parser (the audit reads the locks with it too)."""
    return _load_tool("audit")


@cache
def project() -> dict[str, Any]:
    """The [project] table of pyproject.toml."""
    table: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return table


def pins(path: Any) -> dict[str, Any]:
    """The pins of one lock file, by canonical name."""
    result: dict[str, Any] = audit().read_pins(path.read_text())
    return result


def _assert_pinned_within(requirements: list[str], lock: dict[str, Any], lock_name: str) -> None:
    for spec in requirements:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{name} ({spec}) is not pinned in {lock_name}: run make lock"
        version = lock[name].version
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock_name} pins {name}=={version}, which {spec!r} does not admit: run make lock"
        )


def test_every_runtime_dependency_is_pinned_in_the_image_lock_at_an_admitted_version() -> None:
    """Each [project] dependency has a pin in constraints/runtime.txt that its specifier admits."""
    _assert_pinned_within(project()["dependencies"], pins(RUNTIME_LOCK), "constraints/runtime.txt")


def test_every_dev_requirement_is_pinned_in_the_dev_lock_at_an_admitted_version() -> None:
    """Each requirement of the [dev] extra has a pin in constraints/dev.txt that its specifier admits."""
    _assert_pinned_within(project()["optional-dependencies"]["dev"], pins(DEV_LOCK), "constraints/dev.txt")


def test_every_runtime_pin_carries_sha256_hashes() -> None:
    """Every pin of the image's lock lists at least one sha256 digest (pip --require-hashes needs them)."""
    runtime = pins(RUNTIME_LOCK)
    assert runtime
    for name, pin in runtime.items():
        assert pin.hashes, f"{name} has no --hash in constraints/runtime.txt: run make lock"
        for digest in pin.hashes:
            assert re.fullmatch(r"[0-9a-f]{64}", digest), (name, digest)


def test_runtime_pins_equal_the_dev_pins() -> None:
    """The image runs the versions the tests ran: each runtime pin is dev.txt's pin of the same package."""
    runtime, dev = pins(RUNTIME_LOCK), pins(DEV_LOCK)
    assert {name: pin.version for name, pin in runtime.items()} == {
        name: dev[name].version if name in dev else None for name in runtime
    }


def test_runtime_lock_is_the_runtime_closure() -> None:
    """constraints/runtime.txt pins exactly the runtime dependencies and what they pull in, nothing more."""
    closure: set[str] = set()
    todo = [Requirement(spec).name for spec in project()["dependencies"]]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in closure:
            continue
        closure.add(name)
        for spec in metadata.distribution(name).requires or []:
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate(LOCK_ENVIRONMENT):
                todo.append(requirement.name)
    assert set(pins(RUNTIME_LOCK)) == closure


def test_the_image_installs_the_runtime_lock_requiring_hashes() -> None:
    """The Dockerfile's one install of constraints/runtime.txt passes --require-hashes (and --no-deps)."""
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    (install,) = [run for stage in stages for run in stage.all("RUN") if "-r constraints/runtime.txt" in run]
    assert "--require-hashes" in install.split()
    assert "--no-deps" in install.split()
