"""`worker config`: effective settings with their sources, credentials redacted, --json and --check."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from pydantic_settings import BaseSettings, SettingsConfigDict

from tests.conftest import assert_loopback
from tests.helpers import Run, run_concurrently, setting_variables
from tests.test_settings import DLQ, GOOD, HANDLER, QUEUE
from worker.ops.config_view import (
    AWS_CREDENTIALS,
    REDACTED,
    ConfigView,
    Row,
    aws_rows,
    config_view,
    display,
    redact_text,
    redact_value,
    render_json,
    render_text,
    setting_rows,
)
from worker.settings import ENV_PREFIX, load_settings

#: Credentials the subprocesses get: distinctive, so their absence from the output means something.
SECRET_KEY = "wJalrXUtnFEMIK7MDENGbPxRfiCYzSecretValue1"
SESSION_TOKEN = "IQoJb3JpZ2luX2VjSessionTokenValue"
PASSWORD = "hunter2-Pa55word"
#: A loopback port nothing listens on: a connection attempt could only fail, never reach AWS.
NOWHERE = "http://127.0.0.1:9"


# --- rows and sources (in process) --------------------------------------------------------------------


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment with only GOOD's WORKER_* variables set (as tests/test_settings.py's fixture)."""
    for name in list(os.environ):
        if name.upper().startswith("WORKER_"):
            monkeypatch.delenv(name)
    for name, value in GOOD.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def by_name(rows: tuple[Row, ...]) -> dict[str, Row]:
    """Rows keyed by variable name (and no name twice)."""
    named = {row.name: row for row in rows}
    assert len(named) == len(rows)
    return named


def test_one_row_per_setting_in_field_order(env: pytest.MonkeyPatch) -> None:
    """Every leaf setting (nested ones as WORKER_X__Y) has exactly one row, in the model's order."""
    rows = setting_rows(load_settings(), ENV_PREFIX)
    assert [row.name for row in rows] == setting_variables()
    assert "WORKER_BREAKER__FAILURE_RATIO" in setting_variables()


def test_sources_follow_what_the_environment_set(env: pytest.MonkeyPatch) -> None:
    """Variables set in the environment (even to the default value, even lower-case) say environment."""
    env.setenv("WORKER_CONCURRENCY", "7")
    env.setenv("worker_pollers", "2")  # the default value, set explicitly, lower-case
    env.setenv("WORKER_LOG_LEVEL", "debug")
    rows = by_name(setting_rows(load_settings(), ENV_PREFIX))
    from_env = {name for name, row in rows.items() if row.source == "environment"}
    assert from_env == {*GOOD, "WORKER_CONCURRENCY", "WORKER_POLLERS", "WORKER_LOG_LEVEL"}
    assert {row.source for name, row in rows.items() if name not in from_env} == {"default"}
    assert rows["WORKER_CONCURRENCY"].value == 7
    assert rows["WORKER_LOG_LEVEL"].value == "DEBUG"  # the validated value, not the raw text
    assert rows["WORKER_TIMEOUT_SECONDS"] == Row("WORKER_TIMEOUT_SECONDS", 30.0, "default")


def test_values_print_as_they_are_written_in_the_environment(env: pytest.MonkeyPatch) -> None:
    """Booleans, lists, unset optionals and unprintable text each have one unambiguous text form."""
    env.delenv("WORKER_DLQ_URL")
    env.setenv("WORKER_ON_SUCCESS", "sqs://done, s3://bucket/prefix")
    env.setenv("WORKER_LOG_BODIES", "1")
    env.setenv("WORKER_HANDLER_VERSION", "v1\tbeta")
    lines = render_text(config_view(load_settings(), {}, ENV_PREFIX)).splitlines()
    assert "WORKER_DLQ_URL=<unset>  (default)" in lines
    assert "WORKER_ON_SUCCESS=sqs://done,s3://bucket/prefix  (environment)" in lines
    assert "WORKER_ON_FAILURE=  (default)" in lines
    assert "WORKER_LOG_BODIES=true  (environment)" in lines
    assert 'WORKER_HANDLER_VERSION="v1\\tbeta"  (environment)' in lines
    assert display(False) == "false"


class _Database(BaseModel):
    host: str = "localhost"
    port: int = 5432
    password: str = ""


class _NestedSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CFGTEST_", env_nested_delimiter="__", case_sensitive=False)

    name: str = "x"
    db: _Database = _Database()


def test_nested_settings_get_one_row_per_leaf_with_its_own_source(monkeypatch: pytest.MonkeyPatch) -> None:
    """A nested model's fields are rows PARENT__CHILD, each with its own source; its password is redacted."""
    monkeypatch.setenv("CFGTEST_DB__HOST", "db.internal")
    monkeypatch.setenv("CFGTEST_DB__PASSWORD", PASSWORD)
    rows = setting_rows(_NestedSettings(), "CFGTEST_")
    assert rows == (
        Row("CFGTEST_NAME", "x", "default"),
        Row("CFGTEST_DB__HOST", "db.internal", "environment"),
        Row("CFGTEST_DB__PORT", 5432, "default"),
        Row("CFGTEST_DB__PASSWORD", REDACTED, "environment"),
    )


# --- redaction (pure) ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "WORKER_API_TOKEN",
        "WORKER_DB_PASSWORD",
        "WORKER_CLIENT_SECRET",
        "WORKER_SIGNING_KEY",
        "WORKER_CREDENTIALS",
    ],
)
def test_credential_names_hide_every_value(name: str) -> None:
    """A setting named like a credential shows *** whatever its value or type; unset stays visible."""
    for value in ("plain", 12345, True, ["a", "b"]):
        assert redact_value(name, value) == REDACTED
    assert redact_value(name, None) is None


def test_ordinary_names_and_values_pass_unchanged() -> None:
    """Queue URLs, handler paths, numbers and destination lists are shown as they are."""
    assert redact_value("WORKER_QUEUE_URL", QUEUE) == QUEUE
    assert redact_value("WORKER_HANDLER", HANDLER) == HANDLER
    assert redact_value("WORKER_CONCURRENCY", 50) == 50
    assert redact_value("WORKER_ON_SUCCESS", ["sqs://a", "s3://b/c"]) == ["sqs://a", "s3://b/c"]
    assert redact_text("https://example.com/p?region=eu-west-1&page=2") == (
        "https://example.com/p?region=eu-west-1&page=2"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"https://user:{PASSWORD}@sqs.local/1/q", "https://***@sqs.local/1/q"),
        ("https://only-a-token@host.example/x", "https://***@host.example/x"),
        ("https://u:p@ss@host/x", "https://***@host/x"),  # an unencoded '@' in the password
        (
            "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F2026"
            "&X-Amz-Signature=deadbeef",
            "https://b.s3.amazonaws.com/k?***",
        ),
        ("https://hooks.example/in?token=abc123", "https://hooks.example/in?***"),
        ("https://h/x?X%2DAmz%2DSignature=abc", "https://h/x?***"),  # a percent-encoded name
        ("https://h/x#access_token=abc", "https://h/x#***"),
        ("key id AKIAIOSFODNN7EXAMPLE in text", f"key id {REDACTED} in text"),
        ("got 'https://h/x?Signature=abc' here", "got 'https://h/x?***' here"),
    ],
)
def test_redact_text_examples(text: str, expected: str) -> None:
    """Userinfo, credential-bearing queries and fragments, and access key ids become ***; the host stays."""
    assert redact_text(text) == expected


_USERINFO_CHARS = st.text(
    alphabet=st.sampled_from("abcXYZ019-._~!$&'()*+,;=:%@"), min_size=1, max_size=30
).filter(lambda text: "://" not in text)
_HOSTS = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z]{2,5}){0,2}(:[0-9]{1,5})?", fullmatch=True)
_PATHS = st.from_regex(r"(/[A-Za-z0-9._-]{1,12}){0,3}", fullmatch=True)
_QUERY_NAMES = st.sampled_from(
    [
        "X-Amz-Credential",
        "X-Amz-Signature",
        "x-amz-security-token",
        "Signature",
        "token",
        "access_token",
        "sig",
        "apiKey",
        "client_secret",
        "password",
    ]
)
_QUERY_VALUES = st.text(alphabet=st.sampled_from("abcXYZ0189-._~%2F+="), max_size=40)


@settings(max_examples=100, deadline=None)
@given(
    scheme=st.sampled_from(["https", "http", "sqs", "amqp"]),
    userinfo=_USERINFO_CHARS,
    host=_HOSTS,
    path=_PATHS,
)
def test_userinfo_is_always_redacted_and_host_kept(scheme: str, userinfo: str, host: str, path: str) -> None:
    """Property: any userinfo (user, user:password, '@' inside) becomes ***; scheme, host and path stay."""
    assert redact_text(f"{scheme}://{userinfo}@{host}{path}") == f"{scheme}://***@{host}{path}"


@settings(max_examples=100, deadline=None)
@given(
    host=_HOSTS,
    path=_PATHS,
    name=_QUERY_NAMES,
    secret=_QUERY_VALUES,
    before=st.lists(st.sampled_from(["a=1", "region=eu", "x="]), max_size=3),
    after=st.lists(st.sampled_from(["b=2", "expires=60"]), max_size=3),
)
def test_credential_queries_are_always_redacted(
    host: str, path: str, name: str, secret: str, before: list[str], after: list[str]
) -> None:
    """Property: a query with a credential parameter anywhere in it is *** as a whole; host and path stay."""
    query = "&".join([*before, f"{name}={secret}", *after])
    assert redact_text(f"https://{host}{path}?{query}") == f"https://{host}{path}?***"


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=80))
def test_redaction_is_idempotent(text: str) -> None:
    """Property: redacting twice changes nothing more (a redacted line never looks like a new secret)."""
    once = redact_text(text)
    assert redact_text(once) == once


def test_aws_section_shows_endpoint_and_region_never_credentials() -> None:
    """Endpoint and regions show their values (userinfo redacted); credentials only set or unset."""
    environ = {
        "AWS_ENDPOINT_URL": f"http://admin:{PASSWORD}@127.0.0.1:4566",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_PROFILE": "prod",
    }
    rows = aws_rows(environ)
    assert rows == (
        Row("AWS_ENDPOINT_URL", "http://***@127.0.0.1:4566", "environment"),
        Row("AWS_REGION", None, "unset"),
        Row("AWS_DEFAULT_REGION", "eu-west-1", "environment"),
        Row("AWS_ACCESS_KEY_ID", "set", "environment"),
        Row("AWS_SECRET_ACCESS_KEY", "set", "environment"),
        Row("AWS_SESSION_TOKEN", "unset", "unset"),
    )
    view = ConfigView(settings=(), aws=rows)
    for rendered in (render_text(view), render_json(view)):
        assert PASSWORD not in rendered
        assert SECRET_KEY not in rendered
        assert "AKIAIOSFODNN7EXAMPLE" not in rendered
        assert "AWS_PROFILE" not in rendered


def test_json_document_shape(env: pytest.MonkeyPatch) -> None:
    """--json: settings and aws keyed by variable, each with value and source, and valid true."""
    env.setenv("WORKER_ON_FAILURE", "sqs://failed")
    document = json.loads(render_json(config_view(load_settings(), {"AWS_REGION": "eu-west-1"}, ENV_PREFIX)))
    assert set(document) == {"settings", "aws", "valid"}
    assert document["valid"] is True
    assert list(document["settings"]) == setting_variables()
    assert document["settings"]["WORKER_ON_FAILURE"] == {"value": ["sqs://failed"], "source": "environment"}
    assert document["settings"]["WORKER_DLQ_URL"] == {"value": DLQ, "source": "environment"}
    assert document["settings"]["WORKER_LOG_BODIES"] == {"value": False, "source": "default"}
    assert document["aws"]["AWS_REGION"] == {"value": "eu-west-1", "source": "environment"}
    assert document["aws"]["AWS_ENDPOINT_URL"] == {"value": None, "source": "unset"}


# --- the command (one interpreter per case, all started at once) ----------------------------------------


def command_env(changes: dict[str, str | None]) -> dict[str, str]:
    """The sealed test environment (no WORKER_*), AWS pointed at a dead loopback port, GOOD, then changes."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("WORKER_")}
    env.update(
        AWS_ENDPOINT_URL=NOWHERE,
        AWS_ACCESS_KEY_ID="AKIAIOSFODNN7EXAMPLE",
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        AWS_SESSION_TOKEN=SESSION_TOKEN,
        AWS_EC2_METADATA_DISABLED="true",
    )
    assert_loopback(env["AWS_ENDPOINT_URL"])
    env.update(GOOD)
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


#: Connects refused, `worker config --json` runs as the CLI does; then the AWS libraries it loaded are listed.
_GUARDED = """
import socket, sys
def refuse(*args, **kwargs):
    raise AssertionError("worker config tried to connect")
socket.socket.connect = socket.socket.connect_ex = socket.create_connection = refuse
from worker.cli import main
code = main(["config", "--json"])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("aiobotocore", "botocore", "aiohttp", "anyio"))
sys.stderr.write("HEAVY=" + ",".join(heavy) + "\\n")
raise SystemExit(code)
"""


#: The cases run through a fresh interpreter each (the rest call main() in process, for speed).
CASES: dict[str, tuple[list[str], dict[str, str | None]]] = {
    "text": (
        ["-m", "worker", "config"],
        {"WORKER_DLQ_URL": DLQ.replace("https://", f"https://u:{PASSWORD}@")},
    ),
    "json": (["-m", "worker", "config", "--json"], {"WORKER_CONCURRENCY": "8"}),
    "check ok": (["-m", "worker", "config", "--check"], {}),
    "check bad": (["-m", "worker", "config", "--check"], {"WORKER_CONCURRENCY": "0"}),
    "secret in error": (
        ["-m", "worker", "config", "--check"],
        {"WORKER_ON_FAILURE": f"https://u:{PASSWORD}@h/x?X-Amz-Signature={SESSION_TOKEN}"},
    ),
    "bad flag": (["-m", "worker", "config", "--bogus"], {}),
    "guarded": (["-c", _GUARDED], {}),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """Every subprocess case of this module, started at once (each a fresh interpreter), then collected."""
    workdir: Path = tmp_path_factory.mktemp("config")
    return run_concurrently(
        {name: (argv, command_env(changes)) for name, (argv, changes) in CASES.items()}, workdir
    )


def no_credentials(run: Run) -> None:
    """Neither stream of a run holds a credential value."""
    for secret in (PASSWORD, SECRET_KEY, SESSION_TOKEN, "AKIAIOSFODNN7EXAMPLE"):
        assert secret not in run.stdout
        assert secret not in run.stderr


def test_text_lists_every_setting_with_its_source(runs: dict[str, Run]) -> None:
    """`worker config`: one NAME=value  (source) line per setting, then the aws section, nothing secret."""
    run = runs["text"]
    assert (run.code, run.stderr) == (0, "")
    lines = run.stdout.splitlines()
    settings_lines = lines[: len(setting_variables())]
    assert [line.split("=", 1)[0] for line in settings_lines] == setting_variables()
    assert f"WORKER_QUEUE_URL={QUEUE}  (environment)" in lines
    assert (
        "WORKER_DLQ_URL=https://***@sqs.us-east-1.amazonaws.com/123456789012/orders-dlq  (environment)"
        in lines
    )
    assert "WORKER_CONCURRENCY=50  (default)" in lines
    assert f"AWS_ENDPOINT_URL={NOWHERE}  (environment)" in lines
    assert "AWS_REGION=<unset>  (unset)" in lines
    assert "AWS_DEFAULT_REGION=us-east-1  (environment)" in lines
    assert {f"{name}=set  (environment)" for name in AWS_CREDENTIALS} <= set(lines)
    assert "AWS_CONFIG_FILE" not in run.stdout
    no_credentials(run)


def test_json_for_tooling(runs: dict[str, Run]) -> None:
    """`worker config --json`: one JSON object with each setting's value and source, aws, valid true."""
    run = runs["json"]
    assert (run.code, run.stderr) == (0, "")
    document = json.loads(run.stdout)
    assert document["valid"] is True
    assert document["settings"]["WORKER_CONCURRENCY"] == {"value": 8, "source": "environment"}
    assert document["settings"]["WORKER_POLLERS"] == {"value": None, "source": "default"}
    assert document["aws"]["AWS_SECRET_ACCESS_KEY"] == {"value": "set", "source": "environment"}
    no_credentials(run)


def test_check_ok_prints_one_line(runs: dict[str, Run]) -> None:
    """`worker config --check` on a valid configuration: exit 0, "configuration OK" only."""
    run = runs["check ok"]
    assert (run.code, run.stdout, run.stderr) == (0, "configuration OK\n", "")


def test_check_bad_setting_exits_2_with_one_line_naming_it(runs: dict[str, Run]) -> None:
    """`worker config --check` with a bad setting: exit 2, one stderr line naming it, nothing on stdout."""
    run = runs["check bad"]
    assert (run.code, run.stdout) == (2, "")
    assert run.stderr.splitlines() == [
        "worker: configuration error: WORKER_CONCURRENCY: Input should be greater than or equal to 1"
    ]


def call_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> Run:
    """``main(argv)`` in this process (argparse's exits included) and what it printed."""
    from worker.cli import main

    try:
        code = main(argv)
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return Run(code, out, err)


@pytest.mark.parametrize(
    ("argv", "changes", "variable"),
    [
        (["config", "--check"], {"WORKER_HANDLER": None}, "WORKER_HANDLER"),
        (["config"], {"WORKER_BACKOFF_BASE_SECONDS": "600"}, "WORKER_BACKOFF_BASE_SECONDS"),
        (["config", "--json"], {"WORKER_HTTP_PORT": "70000"}, "WORKER_HTTP_PORT"),
    ],
    ids=["check missing", "table bad", "json bad"],
)
def test_invalid_configuration_exits_2_with_one_line(
    argv: list[str],
    changes: dict[str, str | None],
    variable: str,
    env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Any form of `worker config` on a bad setting: exit 2, one line naming it; --json adds valid false."""
    for name, value in changes.items():
        if value is None:
            env.delenv(name)
        else:
            env.setenv(name, value)
    run = call_main(argv, capsys)
    assert run.code == 2
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("worker: configuration error: ")
    assert variable in lines[0]
    if "--json" in argv:
        error = lines[0].removeprefix("worker: configuration error: ")
        assert json.loads(run.stdout) == {"valid": False, "error": error}
    else:
        assert run.stdout == ""


def test_check_line_is_the_one_worker_run_prints(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same bad setting gives `worker run` and `worker config --check` the same line and exit code."""
    env.setenv("WORKER_WAIT_TIME_SECONDS", "20")
    env.setenv("WORKER_SHUTDOWN_TIMEOUT_SECONDS", "5")
    check = call_main(["config", "--check"], capsys)
    run = call_main(["run"], capsys)
    assert check == run
    assert run.code == 2
    assert "WORKER_WAIT_TIME_SECONDS" in run.stderr


def test_configuration_errors_never_quote_credentials(runs: dict[str, Run]) -> None:
    """An invalid URL with a password and a signature is named in the error line with both redacted."""
    run = runs["secret in error"]
    assert run.code == 2
    assert "WORKER_ON_FAILURE" in run.stderr
    assert "https://***@h/x?***" in run.stderr
    no_credentials(run)


def test_bad_flag_prints_usage(runs: dict[str, Run]) -> None:
    """`worker config --bogus`: usage on stderr naming the flag, exit 2, nothing on stdout."""
    run = runs["bad flag"]
    assert (run.code, run.stdout) == (2, "")
    assert run.stderr.startswith("usage: worker")
    assert "unrecognized arguments: --bogus" in run.stderr


def test_json_and_check_together_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """--json and --check exclude each other: usage of `worker config`, exit 2."""
    run = call_main(["config", "--json", "--check"], capsys)
    assert (run.code, run.stdout) == (2, "")
    assert run.stderr.startswith("usage: worker config")
    assert "not allowed with argument" in run.stderr


def test_run_help_points_to_worker_config(capsys: pytest.CaptureFixture[str]) -> None:
    """`worker run --help` names `worker config` and docs/configuration.md."""
    run = call_main(["run", "--help"], capsys)
    assert run.code == 0
    text = " ".join(run.stdout.split())
    assert "`worker config` prints the effective ones" in text
    assert "docs/configuration.md" in text


def test_config_imports_no_aws_library_and_connects_nowhere(runs: dict[str, Run]) -> None:
    """With connects refused, `worker config --json` succeeds and never imports aiobotocore/botocore/anyio."""
    run = runs["guarded"]
    assert run.code == 0, run.stderr
    assert "HEAVY=\n" in run.stderr
    assert json.loads(run.stdout)["valid"] is True
