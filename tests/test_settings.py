"""Settings from WORKER_* variables: defaults in process, and one-line configuration errors from the CLI."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from tests.helpers import Run, run_concurrently
from worker.engine.breaker import BreakerConfig
from worker.engine.rollout_gates import Gates
from worker.engine.rollout_plan import Step
from worker.errors import ConfigError
from worker.settings import Settings, derived_wait_seconds, load_settings
from worker.settings_groups import BreakerSettings, CanarySettings, s3_location

QUEUE = "https://sqs.us-east-1.amazonaws.com/123456789012/orders"
DLQ = "https://sqs.us-east-1.amazonaws.com/123456789012/orders-dlq"
HANDLER = "app.handlers:handle"
GOOD = {"WORKER_QUEUE_URL": QUEUE, "WORKER_HANDLER": HANDLER, "WORKER_DLQ_URL": DLQ}
#: A complete canary on top of GOOD (the baseline's version is WORKER_HANDLER_VERSION's default, unknown).
CANARY = {
    "WORKER_CANARY__HANDLER": "app.handlers:handle_v2",
    "WORKER_CANARY__VERSION": "v2",
    "WORKER_CANARY__STATE": "s3://rollouts/orders",
    "WORKER_CANARY__CONFIG": "Canary10Percent5Minutes",
}


def canary_without(name: str) -> dict[str, str | None]:
    """CANARY without one of its variables."""
    return {key: value for key, value in CANARY.items() if key != name}


@dataclass(frozen=True)
class Bad:
    """A bad environment: changes to GOOD (None removes a variable) and the variable the error must name."""

    changes: dict[str, str | None]
    names: str


BAD: dict[str, Bad] = {
    "queue url missing": Bad({"WORKER_QUEUE_URL": None}, "WORKER_QUEUE_URL"),
    "queue url not a url": Bad({"WORKER_QUEUE_URL": "orders"}, "WORKER_QUEUE_URL"),
    "handler missing": Bad({"WORKER_HANDLER": None}, "WORKER_HANDLER"),
    "handler without colon": Bad({"WORKER_HANDLER": "app.handlers.handle"}, "WORKER_HANDLER"),
    "handler without callable": Bad({"WORKER_HANDLER": "app.handlers:"}, "WORKER_HANDLER"),
    "handler with spaces": Bad({"WORKER_HANDLER": "app handlers:handle"}, "WORKER_HANDLER"),
    "handler with trailing newline": Bad({"WORKER_HANDLER": "app.handlers:handle\n"}, "WORKER_HANDLER"),
    "concurrency zero": Bad({"WORKER_CONCURRENCY": "0"}, "WORKER_CONCURRENCY"),
    "concurrency not a number": Bad({"WORKER_CONCURRENCY": "abc"}, "WORKER_CONCURRENCY"),
    "concurrency lower-case name": Bad({"worker_concurrency": "0"}, "WORKER_CONCURRENCY"),
    "timeout negative": Bad({"WORKER_TIMEOUT_SECONDS": "-1"}, "WORKER_TIMEOUT_SECONDS"),
    "max attempts zero": Bad({"WORKER_MAX_ATTEMPTS": "0"}, "WORKER_MAX_ATTEMPTS"),
    "immediate retries negative": Bad({"WORKER_IMMEDIATE_RETRIES": "-1"}, "WORKER_IMMEDIATE_RETRIES"),
    "backoff base above max": Bad(
        {"WORKER_BACKOFF_BASE_SECONDS": "600", "WORKER_BACKOFF_MAX_SECONDS": "300"},
        "WORKER_BACKOFF_BASE_SECONDS",
    ),
    "visibility above 12 h": Bad(
        {"WORKER_VISIBILITY_TIMEOUT_SECONDS": "43201"}, "WORKER_VISIBILITY_TIMEOUT_SECONDS"
    ),
    "dlq same as queue": Bad({"WORKER_DLQ_URL": QUEUE}, "WORKER_DLQ_URL"),
    "dlq fifo for standard queue": Bad({"WORKER_DLQ_URL": DLQ + ".fifo"}, "WORKER_DLQ_URL"),
    "on success bogus": Bad({"WORKER_ON_SUCCESS": "bogus://x"}, "WORKER_ON_SUCCESS"),
    "on failure bogus in list": Bad({"WORKER_ON_FAILURE": "sqs://ok,bogus://x"}, "WORKER_ON_FAILURE"),
    "log level unknown": Bad({"WORKER_LOG_LEVEL": "LOUD"}, "WORKER_LOG_LEVEL"),
    "log format unknown": Bad({"WORKER_LOG_FORMAT": "xml"}, "WORKER_LOG_FORMAT"),
    "http port too big": Bad({"WORKER_HTTP_PORT": "70000"}, "WORKER_HTTP_PORT"),
    "two bad variables": Bad({"WORKER_CONCURRENCY": "0", "WORKER_HTTP_PORT": "70000"}, "WORKER_CONCURRENCY"),
    "wait not below explicit shutdown": Bad(
        {"WORKER_WAIT_TIME_SECONDS": "10", "WORKER_SHUTDOWN_TIMEOUT_SECONDS": "10"},
        "WORKER_WAIT_TIME_SECONDS",
    ),
    "max message age zero": Bad({"WORKER_MAX_MESSAGE_AGE_SECONDS": "0"}, "WORKER_MAX_MESSAGE_AGE_SECONDS"),
    "max message age above 14 days": Bad(
        {"WORKER_MAX_MESSAGE_AGE_SECONDS": "1209601"}, "WORKER_MAX_MESSAGE_AGE_SECONDS"
    ),
    "permanent errors entry without colon": Bad(
        {"WORKER_PERMANENT_ERRORS": "builtins:KeyError,KeyError"}, "WORKER_PERMANENT_ERRORS"
    ),
    "breaker ratio zero": Bad({"WORKER_BREAKER__FAILURE_RATIO": "0"}, "WORKER_BREAKER__FAILURE_RATIO"),
    "breaker ratio above 1": Bad({"WORKER_BREAKER__FAILURE_RATIO": "1.5"}, "WORKER_BREAKER__FAILURE_RATIO"),
    "breaker ratio not a number": Bad(
        {"WORKER_BREAKER__FAILURE_RATIO": "half"}, "WORKER_BREAKER__FAILURE_RATIO"
    ),
    "breaker min calls zero": Bad({"WORKER_BREAKER__MIN_CALLS": "0"}, "WORKER_BREAKER__MIN_CALLS"),
    "breaker window zero": Bad({"WORKER_BREAKER__WINDOW_SECONDS": "0"}, "WORKER_BREAKER__WINDOW_SECONDS"),
    "breaker open above 12 h": Bad({"WORKER_BREAKER__OPEN_SECONDS": "43201"}, "WORKER_BREAKER__OPEN_SECONDS"),
    "breaker open not finite": Bad({"WORKER_BREAKER__OPEN_SECONDS": "inf"}, "WORKER_BREAKER__OPEN_SECONDS"),
    "breaker probes zero": Bad({"WORKER_BREAKER__HALF_OPEN_CALLS": "0"}, "WORKER_BREAKER__HALF_OPEN_CALLS"),
    "breaker enabled not a boolean": Bad({"WORKER_BREAKER__ENABLED": "maybe"}, "WORKER_BREAKER__ENABLED"),
    "breaker route without colon": Bad(
        {"WORKER_BREAKER__ROUTE": "app.routes.route"}, "WORKER_BREAKER__ROUTE"
    ),
    "breaker unknown field": Bad({"WORKER_BREAKER__FAILURE_RATE": "0.5"}, "WORKER_BREAKER__FAILURE_RATE"),
    "breaker lower-case name": Bad({"worker_breaker__min_calls": "0"}, "WORKER_BREAKER__MIN_CALLS"),
    "breaker not a json object": Bad({"WORKER_BREAKER": "off"}, "WORKER_BREAKER:"),
    "breaker json field out of range": Bad(
        {"WORKER_BREAKER": '{"min_calls": 0}'}, "WORKER_BREAKER__MIN_CALLS"
    ),
    "canary handler without colon": Bad({"WORKER_CANARY__HANDLER": "app.v2"}, "WORKER_CANARY__HANDLER"),
    "canary without version": Bad(canary_without("WORKER_CANARY__VERSION"), "WORKER_CANARY__VERSION"),
    "canary version empty": Bad({**CANARY, "WORKER_CANARY__VERSION": ""}, "WORKER_CANARY__VERSION"),
    "canary version is the baseline's": Bad(
        {**CANARY, "WORKER_HANDLER_VERSION": "v2"}, "WORKER_CANARY__VERSION (v2) must differ"
    ),
    "canary without state": Bad(canary_without("WORKER_CANARY__STATE"), "WORKER_CANARY__STATE"),
    "canary without config or steps": Bad(
        canary_without("WORKER_CANARY__CONFIG"), "WORKER_CANARY__CONFIG or WORKER_CANARY__STEPS"
    ),
    "canary config and steps": Bad({**CANARY, "WORKER_CANARY__STEPS": "10:60"}, "WORKER_CANARY__STEPS"),
    "canary config unknown": Bad(
        {"WORKER_CANARY__CONFIG": "Canary10Percent1Minute"}, "WORKER_CANARY__CONFIG"
    ),
    "canary steps not increasing": Bad({"WORKER_CANARY__STEPS": "50:60,10:60"}, "WORKER_CANARY__STEPS"),
    "canary steps with 100": Bad({"WORKER_CANARY__STEPS": "10:60,100:60"}, "WORKER_CANARY__STEPS"),
    "canary steps zero bake": Bad({"WORKER_CANARY__STEPS": "10:0"}, "WORKER_CANARY__STEPS"),
    "canary state not s3": Bad({"WORKER_CANARY__STATE": "https://rollouts/x"}, "WORKER_CANARY__STATE"),
    "canary state bad bucket": Bad({"WORKER_CANARY__STATE": "s3://Rollouts/x"}, "WORKER_CANARY__STATE"),
    "canary state empty segment": Bad({"WORKER_CANARY__STATE": "s3://rollouts/a//b"}, "WORKER_CANARY__STATE"),
    "canary error ratio above 1": Bad(
        {"WORKER_CANARY__MAX_ERROR_RATIO": "1.5"}, "WORKER_CANARY__MAX_ERROR_RATIO"
    ),
    "canary relative ratio zero": Bad(
        {"WORKER_CANARY__MAX_ERROR_RATIO_VS_BASELINE": "0"}, "WORKER_CANARY__MAX_ERROR_RATIO_VS_BASELINE"
    ),
    "canary p99 ratio not finite": Bad(
        {"WORKER_CANARY__MAX_P99_RATIO": "inf"}, "WORKER_CANARY__MAX_P99_RATIO"
    ),
    "canary min samples zero": Bad({"WORKER_CANARY__MIN_SAMPLES": "0"}, "WORKER_CANARY__MIN_SAMPLES"),
    "canary interval zero": Bad(
        {"WORKER_CANARY__EVALUATION_INTERVAL_SECONDS": "0"}, "WORKER_CANARY__EVALUATION_INTERVAL_SECONDS"
    ),
    "canary on rollback bogus in list": Bad(
        {"WORKER_CANARY__ON_ROLLBACK": "sqs://ok,bogus://x"}, "WORKER_CANARY__ON_ROLLBACK"
    ),
    "canary unknown field": Bad({"WORKER_CANARY__WEIGHT": "10"}, "WORKER_CANARY__WEIGHT"),
    "color unknown": Bad({"WORKER_COLOR": "red"}, "WORKER_COLOR"),
    "color without its flag": Bad({"WORKER_COLOR": "green"}, "WORKER_COLOR_STATE"),
    "color flag without key": Bad({"WORKER_COLOR_STATE": "s3://flags"}, "WORKER_COLOR_STATE"),
    "color flag not s3": Bad({"WORKER_COLOR_STATE": "flags/active"}, "WORKER_COLOR_STATE"),
}


#: The cases also run through the real CLI, one interpreter each (the rest only in process, for speed).
CLI_CASES = [
    "queue url missing",
    "handler missing",
    "handler without colon",
    "concurrency zero",
    "concurrency not a number",
    "timeout negative",
    "max attempts zero",
    "backoff base above max",
    "dlq same as queue",
    "on success bogus",
    "log level unknown",
    "http port too big",
    "breaker ratio not a number",
    "breaker not a json object",
    "canary without state",
    "canary steps not increasing",
    "color without its flag",
]


def sealed_env(empty_file: Path, changes: dict[str, str | None]) -> dict[str, str]:
    """os.environ without any WORKER_*/AWS_* variable, AWS files empty, IMDS off; then GOOD and changes."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("WORKER_", "AWS_"))}
    env.update(
        AWS_CONFIG_FILE=str(empty_file),
        AWS_SHARED_CREDENTIALS_FILE=str(empty_file),
        AWS_EC2_METADATA_DISABLED="true",
    )
    env.update(GOOD)
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """Every CLI case of this module, started at once (each is a fresh interpreter) and then collected."""
    workdir = tmp_path_factory.mktemp("cli")
    empty = workdir / "empty"
    empty.write_text("")
    commands: dict[str, tuple[list[str], dict[str, str]]] = {
        name: (["run"], sealed_env(empty, BAD[name].changes)) for name in CLI_CASES
    }
    commands["no arguments"] = ([], sealed_env(empty, {}))
    commands["unknown command"] = (["bogus"], sealed_env(empty, {}))
    # No AWS region anywhere (sealed_env sets none); the endpoint is a dead loopback port.
    no_region = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "WORKER_HANDLER": "builtins:print"}
    commands["no region"] = (["run"], sealed_env(empty, no_region))
    return run_concurrently(
        {name: (["-m", "worker", *argv], env) for name, (argv, env) in commands.items()}, workdir
    )


@pytest.mark.parametrize("case", CLI_CASES)
def test_bad_setting_exits_2_with_one_line_naming_it(case: str, cli_runs: dict[str, Run]) -> None:
    """`worker run` with a bad/missing variable exits 2, one stderr line naming it, no traceback."""
    run = cli_runs[case]
    assert run.code == 2, run.stderr
    assert "Traceback" not in run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert BAD[case].names in lines[0]
    assert lines[0].startswith("worker: configuration error: ")
    assert run.stdout == ""


@pytest.mark.parametrize("case", ["no arguments", "unknown command"])
def test_cli_without_valid_command_prints_usage(case: str, cli_runs: dict[str, Run]) -> None:
    """`worker` alone or `worker bogus` exits 2 and prints the usage line."""
    run = cli_runs[case]
    assert run.code == 2
    assert run.stderr.startswith("usage: worker")
    assert "Traceback" not in run.stderr


# --- in process -------------------------------------------------------------------------------------------


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment with only GOOD's WORKER_* variables set."""
    for name in list(os.environ):
        if name.upper().startswith("WORKER_"):
            monkeypatch.delenv(name)
    for name, value in GOOD.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def test_documented_defaults(env: pytest.MonkeyPatch) -> None:
    """With only the required variables set, every documented default applies."""
    settings = load_settings()
    assert settings.queue_url == QUEUE
    assert settings.handler == HANDLER
    assert settings.dlq_url == DLQ
    assert settings.concurrency == 50
    assert settings.timeout_seconds == 30
    assert settings.max_attempts == 5
    assert settings.immediate_retries == 1
    assert settings.http_port == 9102
    assert settings.visibility_timeout_seconds == 60
    assert (settings.backoff_base_seconds, settings.backoff_max_seconds) == (2.0, 300.0)
    assert (settings.pollers, settings.wait_time_seconds) == (None, 10)  # pollers: sized automatically
    assert (settings.log_level, settings.log_format, settings.log_bodies) == ("INFO", "json", False)
    assert settings.handler_version == "unknown"
    assert settings.on_success == []
    assert settings.on_failure == []
    assert settings.is_fifo is False


def test_values_are_read_and_converted(env: pytest.MonkeyPatch) -> None:
    """Numbers, booleans and a lower-case log level are read from WORKER_* and converted."""
    env.setenv("WORKER_CONCURRENCY", "7")
    env.setenv("WORKER_TIMEOUT_SECONDS", "2.5")
    env.setenv("WORKER_MAX_ATTEMPTS", "9")
    env.setenv("WORKER_IMMEDIATE_RETRIES", "0")
    env.setenv("WORKER_HTTP_PORT", "0")
    env.setenv("WORKER_LOG_LEVEL", "debug")
    env.setenv("WORKER_LOG_BODIES", "true")
    settings = load_settings()
    assert (settings.concurrency, settings.timeout_seconds, settings.max_attempts) == (7, 2.5, 9)
    assert (settings.immediate_retries, settings.http_port) == (0, 0)
    assert settings.log_level == "DEBUG"
    assert settings.log_bodies is True


def test_on_success_comma_separated_list(env: pytest.MonkeyPatch) -> None:
    """WORKER_ON_SUCCESS is split on commas, blanks trimmed and empty parts dropped."""
    other = "https://sqs.us-east-1.amazonaws.com/123456789012/done"
    env.setenv("WORKER_ON_SUCCESS", f" sqs://orders-done , {other},, ")
    env.setenv("WORKER_ON_FAILURE", "sqs://orders-failed")
    settings = load_settings()
    assert settings.on_success == ["sqs://orders-done", other]
    assert settings.on_failure == ["sqs://orders-failed"]


def test_fifo_pair_accepted(env: pytest.MonkeyPatch) -> None:
    """A FIFO queue with a FIFO DLQ is a valid pair and is_fifo is set."""
    env.setenv("WORKER_QUEUE_URL", QUEUE + ".fifo")
    env.setenv("WORKER_DLQ_URL", DLQ + ".fifo")
    assert load_settings().is_fifo is True


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_load_settings_raises_config_error_naming_variable(case: str, env: pytest.MonkeyPatch) -> None:
    """In process, the same bad values raise ConfigError (never ValidationError) naming the variable."""
    for name, value in BAD[case].changes.items():
        if value is None:
            env.delenv(name)
        else:
            env.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    text = str(caught.value)
    assert BAD[case].names in text
    assert "\n" not in text


def test_breaker_defaults_and_nested_variables(env: pytest.MonkeyPatch) -> None:
    """WORKER_BREAKER__* (any case) fill the nested model; unset fields keep the documented defaults."""
    defaults = load_settings().breaker
    assert defaults == BreakerSettings()
    assert (defaults.enabled, defaults.failure_ratio, defaults.min_calls) == (True, 0.5, 20)
    assert (defaults.window_seconds, defaults.open_seconds, defaults.half_open_calls) == (30, 30, 3)
    assert defaults.route is None
    assert defaults.config() == BreakerConfig(0.5, 20, 30.0, 30.0, 3)
    env.setenv("WORKER_BREAKER__ENABLED", "false")
    env.setenv("WORKER_BREAKER__FAILURE_RATIO", "1")
    env.setenv("worker_breaker__min_calls", "3")
    env.setenv("WORKER_BREAKER__OPEN_SECONDS", "43200")
    env.setenv("WORKER_BREAKER__ROUTE", "app.routes:dependencies")
    breaker = load_settings().breaker
    assert (breaker.enabled, breaker.failure_ratio, breaker.min_calls, breaker.open_seconds) == (
        False,
        1,
        3,
        43200,
    )
    assert breaker.route == "app.routes:dependencies"
    assert breaker.config() == BreakerConfig(1.0, 3, 30.0, 43200.0, 3)
    with pytest.raises(ValueError, match="frozen"):
        breaker.min_calls = 1


def test_breaker_from_a_json_object(env: pytest.MonkeyPatch) -> None:
    """WORKER_BREAKER may hold the whole model as JSON; a WORKER_BREAKER__* variable adds to it."""
    env.setenv("WORKER_BREAKER", '{"half_open_calls": 5, "window_seconds": 12.5}')
    env.setenv("WORKER_BREAKER__MIN_CALLS", "7")
    breaker = load_settings().breaker
    assert (breaker.half_open_calls, breaker.window_seconds, breaker.min_calls) == (5, 12.5, 7)


def test_worker_config_and_the_settings_table_show_every_breaker_field(env: pytest.MonkeyPatch) -> None:
    """`worker config` and docs/configuration.md show a WORKER_BREAKER__<FIELD> row per field."""
    from tools.settings_doc import iter_rows
    from worker.ops.config_view import setting_rows

    env.setenv("WORKER_BREAKER__FAILURE_RATIO", "0.25")
    fields = [f"WORKER_BREAKER__{name.upper()}" for name in BreakerSettings.model_fields]
    rows = {row.name: row for row in setting_rows(load_settings(), "WORKER_")}
    assert [name for name in rows if name.startswith("WORKER_BREAKER")] == fields
    assert (rows["WORKER_BREAKER__FAILURE_RATIO"].value, rows["WORKER_BREAKER__FAILURE_RATIO"].source) == (
        0.25,
        "environment",
    )
    assert (rows["WORKER_BREAKER__MIN_CALLS"].value, rows["WORKER_BREAKER__MIN_CALLS"].source) == (
        20,
        "default",
    )
    documented = [row.variable for row in iter_rows() if row.variable.startswith("WORKER_BREAKER")]
    assert documented == fields


def test_canary_and_colors_are_off_by_default(env: pytest.MonkeyPatch) -> None:
    """Without WORKER_CANARY__HANDLER no canary runs; the gates keep their documented defaults; no colour."""
    settings = load_settings()
    canary = settings.canary
    assert canary == CanarySettings()
    assert canary.enabled is False
    assert (canary.max_error_ratio, canary.max_error_ratio_vs_baseline, canary.max_p99_ratio) == (
        0.1,
        None,
        None,
    )
    assert (canary.min_samples, canary.evaluation_interval_seconds, canary.on_rollback) == (20, 10.0, [])
    assert canary.state_location() is None
    assert (settings.color, settings.color_state) == (None, None)


def test_canary_settings_are_read_and_give_the_pure_cores_inputs(env: pytest.MonkeyPatch) -> None:
    """A complete WORKER_CANARY__* set (any case) gives the plan, the gates, the store location, the URIs."""
    for name, value in CANARY.items():
        env.setenv(name.lower(), value)
    env.delenv("worker_canary__config")
    env.setenv("WORKER_CANARY__STEPS", "5:30, 25:60")
    env.setenv("WORKER_CANARY__MAX_ERROR_RATIO_VS_BASELINE", "2")
    env.setenv("WORKER_CANARY__MAX_P99_RATIO", "1.5")
    env.setenv("WORKER_CANARY__MIN_SAMPLES", "50")
    env.setenv("WORKER_CANARY__ON_ROLLBACK", " sqs://rollbacks , sns:arn:aws:sns:us-east-1:123456789012:ops,")
    canary = load_settings().canary
    assert canary.enabled is True
    assert (canary.handler, canary.version) == ("app.handlers:handle_v2", "v2")
    assert canary.plan() == (Step(5, 30.0), Step(25, 60.0))
    assert canary.gates() == Gates(0.1, 2.0, 1.5, 50)
    assert canary.state_location() == ("rollouts", "orders")
    assert canary.on_rollback == ["sqs://rollbacks", "sns:arn:aws:sns:us-east-1:123456789012:ops"]
    env.delenv("WORKER_CANARY__STEPS")
    env.setenv("WORKER_CANARY__CONFIG", "CodeDeployDefault.LambdaLinear10PercentEvery2Minutes")
    env.setenv("WORKER_CANARY__MAX_ERROR_RATIO", "0")
    canary = load_settings().canary
    assert [step.percent for step in canary.plan()] == list(range(10, 100, 10))
    assert canary.gates().max_error_ratio == 0
    env.setenv("WORKER_CANARY__MAX_ERROR_RATIO", "Off")
    env.setenv("WORKER_CANARY__MAX_P99_RATIO", "none")
    env.setenv("WORKER_CANARY__MAX_ERROR_RATIO_VS_BASELINE", "")
    assert load_settings().canary.gates() == Gates(None, None, None, 50)


def test_canary_fields_without_a_handler_are_accepted(env: pytest.MonkeyPatch) -> None:
    """Left-over WORKER_CANARY__* values after a promotion (handler removed) start the worker, canary off."""
    env.setenv("WORKER_CANARY__VERSION", "unknown")
    env.setenv("WORKER_CANARY__STATE", "s3://rollouts")
    canary = load_settings().canary
    assert canary.enabled is False
    assert canary.state_location() == ("rollouts", "")


def test_color_settings(env: pytest.MonkeyPatch) -> None:
    """WORKER_COLOR is read case-insensitively with its flag; the flag alone (an operator's shell) is fine."""
    env.setenv("WORKER_COLOR_STATE", "s3://flags/orders/active-color")
    assert (load_settings().color, load_settings().color_state) == (None, "s3://flags/orders/active-color")
    env.setenv("WORKER_COLOR", "Green")
    assert load_settings().color == "green"


@pytest.mark.parametrize(
    ("uri", "key_required", "expected"),
    [
        ("s3://rollouts", False, ("rollouts", "")),
        ("s3://rollouts/", False, ("rollouts", "")),
        ("s3://rollouts/a/b/", False, ("rollouts", "a/b")),
        ("s3://my.flags/orders/color", True, ("my.flags", "orders/color")),
        ("s3://rollouts", True, "an object key"),
        ("s3://rollouts/", True, "an object key"),
        ("S3://rollouts/a", False, "must be s3://bucket/prefix"),
        ("s3://ro/a", False, "the bucket must be 3-63"),
        ("s3://a..b/a", False, "the bucket"),
        ("s3://rollouts/a//b", False, "empty segment"),
        ("s3://rollouts/" + "k" * 1025, False, "1025 bytes"),
    ],
)
def test_s3_locations(uri: str, key_required: bool, expected: tuple[str, str] | str) -> None:
    """s3://bucket/prefix splits into bucket and path; a bad one raises ValueError saying why."""
    if isinstance(expected, tuple):
        assert s3_location(uri, key_required=key_required) == expected
    else:
        with pytest.raises(ValueError, match=expected):
            s3_location(uri, key_required=key_required)


def test_worker_config_and_the_settings_table_show_every_canary_field(env: pytest.MonkeyPatch) -> None:
    """`worker config` and docs/configuration.md show a WORKER_CANARY__<FIELD> row per field, and colours."""
    from tools.settings_doc import iter_rows
    from worker.ops.config_view import setting_rows

    env.setenv("WORKER_CANARY__MIN_SAMPLES", "7")
    fields = [f"WORKER_CANARY__{name.upper()}" for name in CanarySettings.model_fields]
    rows = {row.name: row for row in setting_rows(load_settings(), "WORKER_")}
    assert [name for name in rows if name.startswith("WORKER_CANARY")] == fields
    assert (rows["WORKER_CANARY__MIN_SAMPLES"].value, rows["WORKER_CANARY__MIN_SAMPLES"].source) == (
        7,
        "environment",
    )
    documented = [row.variable for row in iter_rows()]
    assert [name for name in documented if name.startswith("WORKER_CANARY")] == fields
    assert {"WORKER_COLOR", "WORKER_COLOR_STATE"} <= set(documented) & set(rows)


def test_overrides_beat_environment(env: pytest.MonkeyPatch) -> None:
    """Keyword overrides to load_settings take precedence over the environment."""
    env.setenv("WORKER_CONCURRENCY", "3")
    assert load_settings(concurrency=11).concurrency == 11


def test_settings_are_frozen(env: pytest.MonkeyPatch) -> None:
    """Settings cannot be changed after loading (they are passed down once)."""
    settings = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.concurrency = 1
    assert isinstance(settings, Settings)


# --- defaults that adapt: the long-poll wait follows the drain budget unless set ---------------------------


@pytest.mark.parametrize(
    ("budget", "wait"),
    [
        ("30", 10),
        ("20", 10),
        ("19.9", 9),
        ("10", 5),
        ("3", 1),
        ("2", 1),
        ("1.99", 0),
        ("0.5", 0),
        ("inf", 10),
    ],
)
def test_unset_wait_is_derived_from_the_shutdown_budget(
    env: pytest.MonkeyPatch, budget: str, wait: int
) -> None:
    """WAIT_TIME_SECONDS unset: min(10, floor(SHUTDOWN_TIMEOUT_SECONDS / 2)); a budget alone never fails."""
    env.setenv("WORKER_SHUTDOWN_TIMEOUT_SECONDS", budget)
    settings = load_settings()
    assert settings.wait_time_seconds == wait
    assert type(settings.wait_time_seconds) is int  # every caller does arithmetic with it
    assert "wait_time_seconds" not in settings.model_fields_set


def test_shutdown_timeout_of_ten_alone_starts(env: pytest.MonkeyPatch) -> None:
    """WORKER_SHUTDOWN_TIMEOUT_SECONDS=10 alone is valid: the default wait (10) no longer refuses it."""
    env.setenv("WORKER_SHUTDOWN_TIMEOUT_SECONDS", "10")
    settings = load_settings()
    assert (settings.wait_time_seconds, settings.shutdown_timeout_seconds) == (5, 10.0)


def test_explicit_wait_is_kept_and_checked(env: pytest.MonkeyPatch) -> None:
    """An explicit wait is used as it is (10 with a 10.5 s budget), and refused only when not below it."""
    env.setenv("WORKER_SHUTDOWN_TIMEOUT_SECONDS", "10.5")
    env.setenv("WORKER_WAIT_TIME_SECONDS", "10")
    assert load_settings().wait_time_seconds == 10
    assert load_settings(wait_time_seconds=0).wait_time_seconds == 0
    env.setenv("WORKER_SHUTDOWN_TIMEOUT_SECONDS", "10")
    with pytest.raises(ConfigError, match=r"^WORKER_WAIT_TIME_SECONDS \(10\) must be below WORKER_SHUTDOWN"):
        load_settings()


def test_explicit_wait_with_default_budget(env: pytest.MonkeyPatch) -> None:
    """An explicit wait with the default 30 s budget is never refused (the wait is at most 20)."""
    env.setenv("WORKER_WAIT_TIME_SECONDS", "20")
    settings = load_settings()
    assert (settings.wait_time_seconds, settings.shutdown_timeout_seconds) == (20, 30.0)


@given(budget=st.floats(min_value=1e-6, max_value=1e7, allow_nan=False))
@hypothesis_settings(max_examples=200, deadline=None)
def test_derived_wait_always_below_budget_and_at_most_half(budget: float) -> None:
    """The derived wait is an int in [0, 10], below the budget, at most half of it, 0 only below 2 s."""
    wait = derived_wait_seconds(budget)
    assert isinstance(wait, int)
    assert 0 <= wait <= 10
    assert wait < budget
    assert wait <= budget / 2
    assert (wait == 0) == (budget < 2)
    assert wait == min(10, math.floor(budget / 2))


# --- the age cap and permanent error types --------------------------------------------------------------


def test_max_age_and_permanent_errors_read(env: pytest.MonkeyPatch) -> None:
    """WORKER_MAX_MESSAGE_AGE_SECONDS (off by default) and the comma-separated WORKER_PERMANENT_ERRORS."""
    settings = load_settings()
    assert (settings.max_message_age_seconds, settings.permanent_errors) == (None, [])
    env.setenv("WORKER_MAX_MESSAGE_AGE_SECONDS", "1209600")
    env.setenv("WORKER_PERMANENT_ERRORS", " builtins:KeyError , json.decoder:JSONDecodeError,, ")
    settings = load_settings()
    assert settings.max_message_age_seconds == 1_209_600
    assert settings.permanent_errors == ["builtins:KeyError", "json.decoder:JSONDecodeError"]


def test_run_without_a_region_exits_2_with_one_line(cli_runs: dict[str, Run]) -> None:
    """`worker run` with no AWS region anywhere exits 2 with one line naming AWS_REGION, not a traceback."""
    run = cli_runs["no region"]
    assert run.code == 2, run.stderr
    assert run.stderr.splitlines() == [
        "worker: configuration error: no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION, or region in the "
        "AWS config profile)"
    ]
