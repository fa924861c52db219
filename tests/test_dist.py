"""The wheel ``make dist`` ships: typed package, console script, license, metadata (built by pip wheel)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from tests.test_deploy_support import ROOT, load_yaml


@pytest.mark.slow
def test_the_wheel_carries_py_typed_the_entry_point_the_license_and_the_classifiers(tmp_path: Path) -> None:
    """pip wheel of the checkout: worker/py.typed, `worker = worker.cli:main`, LICENSE, MIT metadata."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "--wheel-dir",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=110,
    )
    (wheel,) = tmp_path.glob("resilient_sqs_worker-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (info,) = {name.split("/")[0] for name in names if name.split("/")[0].endswith(".dist-info")}
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
        metadata = Parser().parsestr(archive.read(f"{info}/METADATA").decode())
        license_text = archive.read(f"{info}/licenses/LICENSE").decode()
    assert "worker/py.typed" in names
    assert "worker/_data/localstack-host-requirements.txt" in names
    assert not any(name.startswith(("tests/", "bench/", "deploy/")) for name in names)
    assert "[console_scripts]\nworker = worker.cli:main" in entry_points
    assert license_text.startswith("MIT License")
    assert license_text == (ROOT / "LICENSE").read_text()
    assert metadata["License-Expression"] == "MIT"
    assert metadata["Requires-Python"] == ">=3.11"
    classifiers = set(metadata.get_all("Classifier") or [])
    for classifier in (
        "License :: OSI Approved :: MIT License",
        "Typing :: Typed",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
    ):
        assert classifier in classifiers, classifier


def test_ci_tests_every_python_the_classifiers_name_and_no_other() -> None:
    """The CI test matrix is exactly the `Programming Language :: Python :: 3.x` classifiers of pyproject."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    named = sorted(
        c.rsplit(" :: ", 1)[1]
        for c in project["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    )
    matrix = load_yaml(ROOT / ".github" / "workflows" / "ci.yml")["jobs"]["test"]["strategy"]["matrix"]
    assert matrix["python-version"] == named
    assert named[0] == project["requires-python"].removeprefix(">=")
