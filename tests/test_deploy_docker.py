"""The container image without a Docker engine: lint, structure, lock, build context, health check."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest

from tests.conftest import QueueFactory
from tests.helpers import WorkerProcess, http_get_async
from tests.test_deploy_support import ROOT, require

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


@dataclass
class Stage:
    """One FROM ... stage: its base, name and instructions (continuations joined)."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        """Arguments of every instruction with this keyword."""
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages) of a Dockerfile."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("#") and not pending:
            continue
        if raw.lstrip().startswith("#"):
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        line = (pending + raw).strip()
        pending = ""
        if line:
            lines.append(line)
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            match = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", rest, re.IGNORECASE)
            assert match, line
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), match.group(1))
            stages.append(Stage(base=base, name=match.group(2)))
        elif not stages and keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
        else:
            stages[-1].instructions.append((keyword, rest))
    return args, stages


def _final() -> Stage:
    return parse_dockerfile(DOCKERFILE.read_text())[1][-1]


def _healthcheck_command() -> list[str]:
    (healthcheck,) = _final().all("HEALTHCHECK")
    command = healthcheck.split(" CMD ", 1)[1]
    parsed = json.loads(command)
    assert isinstance(parsed, list)
    return [str(part) for part in parsed]


def _hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    """hadolint at its strictest (style findings fail) on one Dockerfile."""
    hadolint = require("bin:hadolint")
    return subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_hadolint_finds_nothing_at_its_strictest() -> None:
    """hadolint (the real linter, from PyPI) reports no finding at any level, style included."""
    result = _hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_flag_a_careless_dockerfile(tmp_path: Path) -> None:
    """The same hadolint call fails an untagged base, unpinned apt install and a shell-form CMD."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get update && apt-get install -y curl\nCMD worker run\n")
    result = _hadolint(bad)
    assert result.returncode != 0
    for rule in ("DL3006", "DL3008", "DL3025"):
        assert rule in result.stdout, rule


def test_multi_stage_with_pinned_slim_bases() -> None:
    """Two stages or more, every base a slim Python pinned to a patch version, the last one the runtime."""
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    assert len(stages) >= 2
    for stage in stages:
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", stage.base), (
            stage.base
        )
    assert stages[-1].name == "final"
    copied_from = {
        a.split()[0].removeprefix("--from=") for a in stages[-1].all("COPY") if a.startswith("--from=")
    }
    assert copied_from == {"build"} == {stage.name for stage in stages[:-1]}, (
        "the runtime copies the build's venv"
    )


def test_dependencies_are_installed_from_the_lock_before_the_source_is_copied() -> None:
    """The build stage copies only constraints/runtime.txt, installs it, and only then copies worker/."""
    build = parse_dockerfile(DOCKERFILE.read_text())[1][0]
    order = [(kw, args) for kw, args in build.instructions if kw in {"COPY", "RUN"}]
    lock_copy = next(i for i, (kw, a) in enumerate(order) if kw == "COPY" and "constraints/runtime.txt" in a)
    lock_install = next(
        i for i, (kw, a) in enumerate(order) if kw == "RUN" and "-r constraints/runtime.txt" in a
    )
    source_copy = next(i for i, (kw, a) in enumerate(order) if kw == "COPY" and a.startswith("worker/"))
    assert lock_copy < lock_install < source_copy
    assert all("worker" not in a for kw, a in order[:lock_install] if kw == "COPY")


def test_final_stage_runs_as_non_root_through_tini_in_exec_form() -> None:
    """USER is a numeric non-root uid; ENTRYPOINT is exec-form tini -> worker; CMD is ["run"]."""
    final = _final()
    (user,) = final.all("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit()
    assert int(uid) > 0
    assert not gid or int(gid) > 0
    (entrypoint,) = final.all("ENTRYPOINT")
    assert json.loads(entrypoint) == ["/usr/bin/tini", "--", "worker"]
    (cmd,) = final.all("CMD")
    assert json.loads(cmd) == ["run"]
    keywords = [kw for kw, _ in final.instructions]
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")
    script = re.search(r'^worker = "worker\.cli:main"$', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert script, "the image's entrypoint `worker` must be the project's console script"


def test_final_stage_has_no_build_tools_or_caches() -> None:
    """The runtime stage installs no Python package, only tini (no recommends); drops apt lists and pip."""
    runs = " && ".join(_final().all("RUN"))
    assert "pip install" not in runs
    assert "pip wheel" not in runs
    assert re.search(r"apt-get install -y --no-install-recommends tini=\S+ ", runs)
    assert "rm -rf /var/lib/apt/lists/*" in runs
    assert "pip uninstall --yes --no-input pip setuptools wheel" in runs
    for tool in ("gcc", "build-essential", "git ", "curl"):
        assert tool not in runs, tool


def test_healthcheck_targets_the_worker_liveness_endpoint() -> None:
    """HEALTHCHECK is exec-form python on /healthz at WORKER_HTTP_PORT, defaulting to the worker's port."""
    from worker.settings import Settings

    command = _healthcheck_command()
    assert command[:2] == ["python", "-c"]
    assert "/healthz" in command[2]
    default_port = Settings.model_fields["http_port"].default
    assert f"os.environ.get('WORKER_HTTP_PORT', '{default_port}')" in command[2]
    assert f"EXPOSE {default_port}" in DOCKERFILE.read_text()


async def _run_healthcheck(env: dict[str, str]) -> int:
    """Exit code of the image's HEALTHCHECK command (this interpreter for its ``python``) in ``env``."""
    command = [sys.executable, *_healthcheck_command()[1:]]
    result = await anyio.run_process(command, env=env, check=False)
    return result.returncode


@pytest.mark.localstack
async def test_healthcheck_command_passes_on_a_live_worker_and_fails_once_it_is_gone(
    queues: QueueFactory, aws_env: dict[str, str], tmp_path: Path
) -> None:
    """The HEALTHCHECK command on a live `worker run` subprocess's port exits 0; non-zero once it exited."""
    q = await queues()
    worker = WorkerProcess(aws_env, tmp_path, queue_url=q["url"], dlq_url=q["dlq_url"]).start()
    # What the container gives the worker and its health check alike: WORKER_HTTP_PORT, the worker's own.
    env = {"WORKER_HTTP_PORT": worker.env["WORKER_HTTP_PORT"], "PATH": "/usr/bin:/bin"}
    try:
        await worker.wait_ready()
        assert await _run_healthcheck(env) == 0, worker.logs()[-2000:]
        worker.signal(signal.SIGTERM)
        assert await worker.wait(timeout=30) == 0
    finally:
        worker.kill()
    assert await _run_healthcheck(env) != 0  # nothing listens any more


async def test_healthcheck_command_fails_when_the_worker_reports_itself_stale() -> None:
    """Against the worker's HTTP server with /healthz at 503 (stale polls), the command exits non-zero."""
    from worker.service.http import HttpServer
    from worker.telemetry.health import Health
    from worker.telemetry.metrics import Metrics

    async with anyio.create_task_group() as tg:
        stale = await tg.start(HttpServer("127.0.0.1", 0, Metrics(), Health(stale_after=-1.0)).serve)
        status, _ = await http_get_async(stale, "/healthz")
        assert status == 503
        assert await _run_healthcheck({"WORKER_HTTP_PORT": str(stale), "PATH": "/usr/bin:/bin"}) != 0
        tg.cancel_scope.cancel()


def _ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclude = not line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((exclude, re.compile(regex)))
    return rules


def in_context(path: str) -> bool:
    """Whether Docker sends ``path`` (relative, with /) in the build context (moby patternmatcher rules)."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for exclude, regex in _ignore_rules():
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = exclude
    return not excluded


def test_build_context_holds_what_the_dockerfile_copies_and_nothing_else() -> None:
    """Every COPY source is in the context; tests, VCS, venvs, caches and deploy files are not."""
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    sources = [
        src
        for stage in stages
        for args in stage.all("COPY")
        if not args.startswith("--from=")
        for src in args.split()[:-1]
    ]
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30
    ).stdout.split()
    for src in sources:
        files = [f for f in tracked if f == src or f.startswith(src.rstrip("/") + "/")] or [src]
        for path in files:
            assert (ROOT / path).exists(), f"COPY {src}: {path} does not exist"
            assert in_context(path), f"COPY {src}: {path} is excluded by .dockerignore"
    for path in (
        ".git/HEAD",
        ".venv/bin/python",
        "tests/conftest.py",
        "bench/run.py",
        "deploy/k8s/deployment.yaml",
        "worker/__pycache__/app.cpython-311.pyc",
        ".mypy_cache/x.json",
        "docker-compose.yml",
        ".env",
    ):
        assert not in_context(path), f"{path} would be sent to the Docker daemon"
    allowed = tuple(s.rstrip("/") for s in sources)
    extra = [f for f in tracked if in_context(f) and not f.startswith(allowed)]
    assert extra == [], f"in the build context but never copied: {extra}"


def test_docker_compose_config_when_the_plugin_is_there() -> None:
    """`docker compose config -q` accepts the compose file where the compose plugin exists."""
    try:
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30, check=False)
    except FileNotFoundError:
        pytest.skip("no docker CLI")
    if probe.returncode != 0:
        pytest.skip("docker CLI without the compose plugin")
    result = subprocess.run(
        ["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
