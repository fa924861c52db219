"""Rollout ecosystem files: Argo Rollouts, Flagger, blue/green on Kubernetes and ECS, the dashboard's row.

The queries of the Argo AnalysisTemplate and the Flagger MetricTemplates must name only what the worker
exports and compute the candidate version's numbers (checked by promtool on sample series); the Rollout
and the blue/green fleets must be deploy/k8s's and deploy/ecs's worker with their few additions, and
their settings must validate as `worker run` would read them.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.test_deploy_support import (
    DASHBOARD,
    DEPLOY,
    ROOT,
    exported_metrics,
    load_json,
    load_yaml,
    load_yaml_all,
    promql_problems,
    require,
    settings_from_env,
)

ARGO = DEPLOY / "argo"
FLAGGER = DEPLOY / "flagger"
K8S = DEPLOY / "k8s"
BLUE_GREEN = K8S / "blue-green"
ECS = DEPLOY / "ecs"
ECS_BLUE_GREEN = ECS / "blue-green"
DOC = ROOT / "docs" / "rollouts-ecosystem.md"
COLORS = ("blue", "green")

#: The metrics the rollout row and the judges read (worker/telemetry/metrics.py), with their labels.
ROLLOUT_METRICS = {
    "worker_canary_weight": {"queue"},
    "worker_canary_state": {"queue", "state"},
    "worker_canary_transitions_total": {"queue", "to"},
    "worker_active": {"color"},
}
#: The two judgements both tools make, by Argo metric name -> Flagger MetricTemplate name.
JUDGEMENTS = {"error-ratio": "sqs-worker-error-ratio", "p99-duration": "sqs-worker-p99-duration"}


def _by_kind(paths: list[Path]) -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> document, for every document of ``paths``."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in paths:
        for doc in load_yaml_all(path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in out, f"{key} twice"
            out[key] = doc
    return out


def _template() -> dict[str, Any]:
    (doc,) = load_yaml_all(ARGO / "analysis-template.yaml")
    return dict(doc)


def _rollout() -> dict[str, Any]:
    (doc,) = load_yaml_all(ARGO / "rollout.yaml")
    return dict(doc)


def _canary() -> dict[str, Any]:
    (doc,) = load_yaml_all(FLAGGER / "canary.yaml")
    return dict(doc)


def _metric_templates() -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in load_yaml_all(FLAGGER / "metric-templates.yaml")}


def _base_deployment() -> dict[str, Any]:
    return dict(load_yaml(K8S / "deployment.yaml"))


def _configmap() -> dict[str, str]:
    return dict(load_yaml(K8S / "configmap.yaml")["data"])


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", [])}


# -- Argo: the template's arguments as Argo resolves them --


def _argo_args(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Every argument of the template with the value an AnalysisRun of the Rollout would give it.

    Argo fails a run whose argument has no value ("argument was not supplied"): the defaults come from
    the template, the rest from the Rollout's analysis args.
    """
    supplied = {
        arg["name"]: arg["value"] for arg in _rollout()["spec"]["strategy"]["canary"]["analysis"]["args"]
    }
    values: dict[str, str] = {}
    for arg in _template()["spec"]["args"]:
        value = {**supplied, **(extra or {})}.get(arg["name"], arg.get("value"))
        assert value is not None, f"argument {arg['name']!r} is not supplied by the Rollout"
        values[arg["name"]] = str(value)
    assert set(supplied) <= set(values), (
        f"the Rollout passes unknown arguments: {set(supplied) - set(values)}"
    )
    return values


def _resolve_argo(text: str, args: dict[str, str]) -> str:
    """``{{args.NAME}}`` replaced like Argo's template resolution (an unknown name is an error)."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1).strip()
        assert name.startswith("args."), f"unknown placeholder {match.group(0)}"
        assert name[5:] in args, f"{match.group(0)} is not an argument of the template"
        return args[name[5:]]

    resolved = re.sub(r"\{\{(.*?)\}\}", one, text)
    assert "{{" not in resolved
    return resolved


def _argo_metrics(extra: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """The template's metrics with their arguments resolved (as the AnalysisRun holds them)."""
    args = _argo_args(extra)
    return {
        metric["name"]: json.loads(_resolve_argo(json.dumps(metric), args))
        for metric in _template()["spec"]["metrics"]
    }


def _argo_verdict(condition: str, value: float) -> str:
    """Argo's measurement phase for a one-sample result under ``successCondition`` alone."""
    match = re.fullmatch(r"result\[0\] (<=|<) (\d+(?:\.\d+)?)", condition.strip())
    assert match, f"condition {condition!r}: expected `result[0] <= N` (the queries always return one sample)"
    limit = float(match.group(2))
    ok = value <= limit if match.group(1) == "<=" else value < limit
    return "Successful" if ok else "Failed"


# -- Flagger: the templates' variables as Flagger renders them --


def _flagger_queries() -> dict[str, str]:
    """Per Canary metric: its template's query rendered with the Canary's variables and interval."""
    templates = _metric_templates()
    out: dict[str, str] = {}
    for metric in _canary()["spec"]["analysis"]["metrics"]:
        query = templates[metric["templateRef"]["name"]]["spec"]["query"]
        variables = metric.get("templateVariables", {})

        def one(
            match: re.Match[str], variables: dict[str, str] = variables, interval: str = metric["interval"]
        ) -> str:
            name = match.group(1).strip()
            if name == "interval":
                return interval
            assert name.startswith("variables."), f"unknown placeholder {match.group(0)}"
            assert name[10:] in variables, f"{match.group(0)} is not in the Canary's templateVariables"
            return str(variables[name[10:]])

        out[metric["name"]] = re.sub(r"\{\{(.*?)\}\}", one, query)
        assert "{{" not in out[metric["name"]]
    return out


def _selectors(expr: str) -> list[tuple[str, dict[str, str]]]:
    """(metric, {label: value}) of every equality matcher of every selector of ``expr``."""
    promql = require("promql_parser")
    found: list[tuple[str, dict[str, str]]] = []

    def visit(node: Any) -> None:
        if type(node).__name__ == "VectorSelector":
            equal = {m.name: m.value for m in node.matchers.matchers if m.op == promql.MatchOp.Equal}
            found.append((node.name, equal))

    promql.walk(promql.parse(expr), visit)
    return found


def test_files_parse_with_their_kinds_and_api_versions() -> None:
    """Each file holds exactly the kinds it should, under the CRDs' API groups and versions."""
    expected = {
        ARGO / "analysis-template.yaml": [("argoproj.io/v1alpha1", "AnalysisTemplate")],
        ARGO / "rollout.yaml": [("argoproj.io/v1alpha1", "Rollout")],
        FLAGGER / "metric-templates.yaml": [("flagger.app/v1beta1", "MetricTemplate")] * 2,
        FLAGGER / "canary.yaml": [("flagger.app/v1beta1", "Canary")],
    }
    for path, kinds in expected.items():
        assert [(doc["apiVersion"], doc["kind"]) for doc in load_yaml_all(path)] == kinds, path.name
    assert sorted(p.name for p in ARGO.iterdir()) == ["analysis-template.yaml", "rollout.yaml"]
    assert sorted(p.name for p in FLAGGER.iterdir()) == ["canary.yaml", "metric-templates.yaml"]


def test_analysis_template_passes_argos_own_checks() -> None:
    """Argo's ValidateMetric rules, the two judgements, Prometheus only; every {{args.*}} resolves."""
    metrics = _template()["spec"]["metrics"]
    assert [metric["name"] for metric in metrics] == list(JUDGEMENTS)
    for metric in metrics:
        providers = set(metric["provider"])
        assert providers == {"prometheus"}, metric["name"]
        assert metric["failureLimit"] >= 0
        assert "count" not in metric, "a background analysis runs until the Rollout's steps are done"
        assert re.fullmatch(r"\d+[smh]", metric["interval"]), metric["interval"]
        assert metric["successCondition"]
    resolved = _argo_metrics()
    for name, metric in resolved.items():
        assert metric["provider"]["prometheus"]["address"].startswith("http"), name
    with pytest.raises(AssertionError, match="not an argument"):
        _resolve_argo("{{args.versoin}}", _argo_args())


def test_every_query_uses_exported_metrics_and_labels() -> None:
    """Both tools' queries, filled in, parse and name only exported metrics and labels they carry."""
    queries = {f"argo {n}": m["provider"]["prometheus"]["query"] for n, m in _argo_metrics().items()}
    queries |= {f"flagger {name}": query for name, query in _flagger_queries().items()}
    assert len(queries) == 4
    known = exported_metrics()
    for title, query in queries.items():
        assert promql_problems(query, known) == [], f"{title}: {query}"


def test_the_check_would_catch_a_misspelt_metric_or_label() -> None:
    """A query with a misspelt histogram name or version label is reported (so the check above can fail)."""
    query = _argo_metrics()["p99-duration"]["provider"]["prometheus"]["query"]
    for wrong in (
        query.replace("worker_handler_duration_seconds_bucket", "worker_handler_duration_bucket"),
        query.replace("handler_version=", "handler_versoin="),
    ):
        assert wrong != query
        assert promql_problems(wrong, exported_metrics()) != []


def test_every_selector_is_the_candidate_version_on_its_queue() -> None:
    """Each selector of each query is filtered on the candidate's version and the Rollout's queue."""
    version = _argo_args()["version"]
    queue = _argo_args()["queue"]
    queries = [m["provider"]["prometheus"]["query"] for m in _argo_metrics().values()]
    queries += list(_flagger_queries().values())
    for query in queries:
        selectors = _selectors(query)
        assert selectors
        for name, labels in selectors:
            assert labels.get("handler_version") == version, (name, query)
            assert labels.get("queue") == queue, (name, query)


def test_argo_and_flagger_judge_the_same_way() -> None:
    """Filled in alike, the queries are identical; thresholds, tolerance and minimum samples agree."""
    canary = {metric["name"]: metric for metric in _canary()["spec"]["analysis"]["metrics"]}
    assert set(canary) == set(JUDGEMENTS)
    assert {metric["templateRef"]["name"] for metric in canary.values()} == set(_metric_templates())
    for name, metric in canary.items():
        assert metric["templateRef"]["name"] == JUDGEMENTS[name]
        variables = metric["templateVariables"]
        argo = _argo_metrics({"window": metric["interval"]})[name]
        assert variables["version"] == _argo_args()["version"]
        assert variables["queue"] == _argo_args()["queue"]
        assert variables["min_samples"] == _argo_args()["min-samples"]
        assert _flagger_queries()[name] == argo["provider"]["prometheus"]["query"], name
        limit = float(argo["successCondition"].rsplit(" ", 1)[1])
        assert float(metric["thresholdRange"]["max"]) == limit, name
        assert "min" not in metric["thresholdRange"]
        # Flagger rolls back at `threshold` failed checks; Argo after failureLimit + 1 failed measurements.
        assert argo["failureLimit"] + 1 == _canary()["spec"]["analysis"]["threshold"], name


def test_thresholds_are_the_workers_own() -> None:
    """Error ratio and minimum samples are the worker's gate defaults; the p99 line is 80% of the timeout."""
    from worker.settings_groups import CanarySettings

    args = _argo_args()
    defaults = CanarySettings()
    assert float(args["max-error-ratio"]) == defaults.max_error_ratio
    assert int(args["min-samples"]) == defaults.min_samples
    timeout = settings_from_env(_configmap()).timeout_seconds
    assert float(args["max-p99-seconds"]) == pytest.approx(0.8 * timeout)


def _series(name: str, labels: dict[str, str], per_step: float) -> dict[str, str]:
    text = ", ".join(f'{key}="{value}"' for key, value in labels.items())
    return {"series": f"{name}{{{text}}}", "values": f"0+{per_step:g}x40"}


def _sample_series() -> list[dict[str, str]]:
    """Two replicas of the candidate 0.2.0, the baseline, the candidate on another queue, a quiet 0.3.0.

    The candidate's replicas fail 10% (30 runs a step) and 70% (10 runs): 25% fleet-wide, which neither
    an average nor a maximum of the replicas' ratios gives. Its durations fall in (1, 2.5] seconds, the
    baseline's in (0, 0.1]; on the other queue it fails everything and runs past the last bucket.
    """
    runs = "worker_messages_processed_total"
    out = []
    counts = [
        ("orders", "0.2.0", "w1", {"succeeded": 27, "retried": 3, "dead_lettered": 0}),
        ("orders", "0.2.0", "w2", {"succeeded": 3, "retried": 0, "dead_lettered": 7}),
        ("orders", "0.1.0", "w1", {"succeeded": 40, "retried": 0, "dead_lettered": 0}),
        ("other", "0.2.0", "w1", {"succeeded": 0, "retried": 0, "dead_lettered": 50}),
        ("orders", "0.3.0", "w1", {"succeeded": 0, "retried": 0, "dead_lettered": 1}),
    ]
    buckets = {"0.2.0": "2.5", "0.1.0": "0.1", "0.3.0": "0.1"}
    for queue, version, instance, outcomes in counts:
        labels = {
            "instance": instance,
            "queue": queue,
            "handler": "orders:handle",
            "handler_version": version,
        }
        total = sum(outcomes.values())
        for outcome, per_step in outcomes.items():
            out.append(_series(runs, {**labels, "outcome": outcome}, per_step))
        into = "+Inf" if queue == "other" else buckets[version]
        for le in ("0.1", "1", "2.5", "+Inf"):
            filled = le == "+Inf" or (into != "+Inf" and float(le) >= float(into))
            out.append(
                _series("worker_handler_duration_seconds_bucket", {**labels, "le": le}, total * filled)
            )
        out.append(_series("worker_handler_duration_seconds_count", labels, total))
    return out


#: (version, judgement) -> the value the query must give at 8 minutes (rounded to 0.001).
EXPECTED = {
    ("0.2.0", "error-ratio"): 0.25,
    ("0.1.0", "error-ratio"): 0.0,
    ("0.3.0", "error-ratio"): 0.0,  # 8 runs in the window: fewer than min-samples
    ("0.2.0", "p99-duration"): 2.485,  # 1 + 1.5 * 0.99: interpolated inside (1, 2.5]
    ("0.1.0", "p99-duration"): 0.099,
    ("0.3.0", "p99-duration"): 0.0,
}


def _promtool_cases(expected: dict[tuple[str, str], float]) -> dict[str, Any]:
    cases = []
    for (version, name), value in expected.items():
        query = _argo_metrics({"version": version})[name]["provider"]["prometheus"]["query"]
        cases.append(
            {
                "expr": f"round({query}, 0.001)",
                "eval_time": "8m",
                "exp_samples": [{"labels": "{}", "value": value}],
            }
        )
    return {"tests": [{"interval": "15s", "input_series": _sample_series(), "promql_expr_test": cases}]}


def _promtool(tmp_path: Path, expected: dict[tuple[str, str], float]) -> subprocess.CompletedProcess[str]:
    yaml = require("yaml")
    promtool = require("bin:promtool")
    path = tmp_path / f"rollout-queries-{len(list(tmp_path.iterdir()))}.test.yml"
    path.write_text(yaml.safe_dump(_promtool_cases(expected), sort_keys=False))
    return subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )


def test_queries_compute_the_candidates_numbers_fleet_wide(tmp_path: Path) -> None:
    """promtool: 25% failures over both replicas, p99 2.485 s; other versions, queues, quiet ones: apart."""
    result = _promtool(tmp_path, EXPECTED)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    wrong = {**EXPECTED, ("0.2.0", "error-ratio"): 0.4}  # the average of the replicas' ratios
    result = _promtool(tmp_path, wrong)
    assert result.returncode != 0, "promtool accepted a wrong expectation: the check above cannot fail"
    output = result.stdout + result.stderr
    assert output.count("exp: ") == 1, output
    assert "got: {} 2.5E-01" in output, output


def test_a_failing_candidate_fails_both_judges_and_the_baseline_passes() -> None:
    """On the sample numbers: 25% failures fail Argo's condition and Flagger's range; 0% and 2.5 s pass."""
    argo = _argo_metrics()
    canary = {metric["name"]: metric for metric in _canary()["spec"]["analysis"]["metrics"]}
    for (version, name), value in EXPECTED.items():
        verdict = _argo_verdict(argo[name]["successCondition"], value)
        flagger_ok = value <= float(canary[name]["thresholdRange"]["max"])
        failing = (version, name) == ("0.2.0", "error-ratio")
        assert verdict == ("Failed" if failing else "Successful"), (version, name, value)
        assert flagger_ok is not failing, (version, name, value)


# -- the Rollout and the Canary against deploy/k8s --


def _pod_without(pod: dict[str, Any], names: set[str]) -> dict[str, Any]:
    pod = copy.deepcopy(pod)
    (container,) = pod["containers"]
    container["env"] = [item for item in container["env"] if item["name"] not in names]
    return pod


def test_rollout_runs_the_deployments_pod_plus_the_canary_settings() -> None:
    """The Rollout's pod is deploy/k8s's (image, probes, security, ConfigMap) with WORKER_CANARY__* added."""
    rollout, deployment = _rollout(), _base_deployment()
    spec = rollout["spec"]
    assert "replicas" not in spec, "KEDA owns replicas"
    assert spec["selector"] == deployment["spec"]["selector"]
    assert spec["template"]["metadata"] == deployment["spec"]["template"]["metadata"]
    (container,) = spec["template"]["spec"]["containers"]
    added = {name for name in _env(container) if name.startswith("WORKER_")}
    assert added
    assert all(name.startswith("WORKER_CANARY__") for name in added), added
    assert _pod_without(spec["template"]["spec"], added) == deployment["spec"]["template"]["spec"]


@pytest.mark.parametrize("version", ["1.30", "1.37"])
def test_rollout_pod_template_validates_against_the_kubernetes_schema(version: str) -> None:
    """The Rollout's selector and pod template, as a Deployment, pass kubernetes-validate in strict mode."""
    kv = require("kubernetes_validate")
    rollout = _rollout()
    as_deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": rollout["metadata"],
        "spec": {"selector": rollout["spec"]["selector"], "template": rollout["spec"]["template"]},
    }
    kv.validate(as_deployment, version, strict=True)
    as_deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["configMapRef"]["nmae"] = "x"
    with pytest.raises(kv.ValidationError):
        kv.validate(as_deployment, version, strict=True)


def test_rollout_settings_validate_and_agree_with_its_analysis_and_pause() -> None:
    """ConfigMap + the Rollout's env are valid settings; the analysis judges WORKER_CANARY__VERSION on the
    queue of WORKER_QUEUE_URL, and Argo's pause outlasts the worker's whole plan."""
    from worker.engine.rollout_plan import plan

    (container,) = _rollout()["spec"]["template"]["spec"]["containers"]
    settings = settings_from_env({**_configmap(), **_env(container)})
    assert settings.canary.handler
    assert settings.canary.state
    assert settings.canary.version == _argo_args()["version"] != settings.handler_version
    assert settings.queue_url.rsplit("/", 1)[1] == _argo_args()["queue"]
    steps = _rollout()["spec"]["strategy"]["canary"]["steps"]
    assert steps[0] == {"setWeight": 100}, "every new pod joins the worker's rollout: the worker splits"
    (pause,) = [step["pause"]["duration"] for step in steps if "pause" in step]
    seconds = int(pause[:-1]) * {"s": 1, "m": 60, "h": 3600}[pause[-1]]
    baked = sum(step.bake_seconds for step in plan(settings.canary.config, settings.canary.steps))
    assert seconds > baked + 2 * settings.canary.evaluation_interval_seconds


def test_flagger_canary_targets_the_deployment_without_traffic_shifting() -> None:
    """kubernetes provider, iterations and no weights; deploy/k8s's Deployment, ScaledObject and port;
    its checks outlast the worker's plan."""
    from worker.engine.rollout_plan import plan

    spec = _canary()["spec"]
    deployment = _base_deployment()
    scaled = _by_kind([K8S / "keda.yaml"])
    assert spec["provider"] == "kubernetes"
    assert spec["targetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert ("ScaledObject", spec["autoscalerRef"]["name"]) in scaled
    analysis = spec["analysis"]
    assert not {"stepWeight", "stepWeights", "maxWeight", "mirror"} & set(analysis), (
        "no HTTP traffic to shift"
    )
    (container,) = _rollout()["spec"]["template"]["spec"]["containers"]
    settings = settings_from_env({**_configmap(), **_env(container)})
    assert spec["service"]["port"] == settings.http_port
    assert spec["service"]["targetPort"] == "http"
    minutes = int(analysis["interval"][:-1]) * analysis["iterations"]
    assert analysis["interval"].endswith("m")
    baked = sum(step.bake_seconds for step in plan(settings.canary.config, settings.canary.steps))
    assert minutes * 60 > baked


# -- blue/green on Kubernetes --


def _kustomize_blue_green() -> dict[tuple[str, str], dict[str, Any]]:
    """What `kustomize build` of deploy/k8s/blue-green holds: its resources minus the `$patch: delete`s.

    (Checked against `kubectl kustomize --load-restrictor LoadRestrictionsNone` when written; kustomize is
    not a test dependency.)
    """
    yaml = require("yaml")
    kustomization = load_yaml(BLUE_GREEN / "kustomization.yaml")
    resources = _by_kind([(BLUE_GREEN / path).resolve() for path in kustomization["resources"]])
    for patch in kustomization["patches"]:
        body = yaml.safe_load(patch["patch"])
        assert body.pop("$patch") == "delete", "only deletions are emulated here"
        key = (body["kind"], body["metadata"]["name"])
        assert key in resources, f"deletes {key}, which is not there"
        del resources[key]
    for (kind, _), doc in resources.items():
        if kind != "Namespace":  # cluster-scoped
            doc["metadata"]["namespace"] = kustomization["namespace"]
    return resources


def _colors() -> dict[str, dict[str, Any]]:
    resources = _kustomize_blue_green()
    return {color: resources["Deployment", f"sqs-worker-{color}"] for color in COLORS}


def test_blue_green_kustomization_is_deploy_k8s_with_one_deployment_per_colour() -> None:
    """deploy/k8s's files but its Deployment and ScaledObject; one Deployment and ScaledObject per colour."""
    kustomization = load_yaml(BLUE_GREEN / "kustomization.yaml")
    base = load_yaml(K8S / "kustomization.yaml")
    shared = [f"../{name}" for name in base["resources"] if name != "deployment.yaml"]
    own = sorted(p.name for p in BLUE_GREEN.glob("*.yaml") if p.name != "kustomization.yaml")
    assert kustomization["resources"] == shared + own
    assert kustomization["namespace"] == base["namespace"]
    assert kustomization["labels"] == base["labels"]
    kinds = sorted(_kustomize_blue_green())
    assert kinds == sorted(
        [
            key
            for key in _by_kind([K8S / name for name in base["resources"]])
            if key[0] not in {"Deployment", "ScaledObject"}
        ]
        + [(kind, f"sqs-worker-{color}") for kind in ("Deployment", "ScaledObject") for color in COLORS]
    )


@pytest.mark.parametrize("version", ["1.30", "1.37"])
def test_blue_green_deployments_validate_against_the_kubernetes_schema(version: str) -> None:
    """Both colours' Deployments pass kubernetes-validate in strict mode."""
    kv = require("kubernetes_validate")
    for deployment in _colors().values():
        kv.validate(deployment, version, strict=True)


def test_the_colours_are_the_deployment_with_their_colour_and_the_shared_flag() -> None:
    """Each colour is deploy/k8s's Deployment renamed, with its instance label and WORKER_COLOR(_STATE);
    its settings validate, with one flag for both."""
    base = _base_deployment()
    flags = set()
    for color, deployment in _colors().items():
        name = f"sqs-worker-{color}"
        assert deployment["metadata"]["name"] == name
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        env = _env(container)
        assert env["WORKER_COLOR"] == color
        flags.add(env["WORKER_COLOR_STATE"])
        settings = settings_from_env({**_configmap(), **env})
        assert settings.color == color
        assert settings.color_state == env["WORKER_COLOR_STATE"]
        expected = copy.deepcopy(base)
        expected["metadata"]["name"] = name
        expected["metadata"]["labels"]["app.kubernetes.io/instance"] = name
        expected["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] = name
        expected["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/instance"] = name
        for constraint in expected["spec"]["template"]["spec"]["topologySpreadConstraints"]:
            constraint["labelSelector"]["matchLabels"]["app.kubernetes.io/instance"] = name
        actual = copy.deepcopy(deployment)
        del actual["metadata"]["namespace"]  # set by the kustomization, as deploy/k8s's is
        actual["spec"]["template"]["spec"] = _pod_without(
            actual["spec"]["template"]["spec"], {"WORKER_COLOR", "WORKER_COLOR_STATE"}
        )
        assert actual == expected
    assert len(flags) == 1, "both colours must read the same flag"


def test_selectors_keep_the_colours_apart_and_shared_objects_see_both() -> None:
    """A colour's selector and ScaledObject take its pods only; the PDB and PodMonitor (rules' job) both."""
    resources = _kustomize_blue_green()
    pods = {color: d["spec"]["template"]["metadata"]["labels"] for color, d in _colors().items()}
    for color, deployment in _colors().items():
        selector = deployment["spec"]["selector"]["matchLabels"]
        other = "green" if color == "blue" else "blue"
        assert selector.items() <= pods[color].items()
        assert not selector.items() <= pods[other].items(), f"{color}'s selector takes {other}'s pods"
        scaled = resources["ScaledObject", f"sqs-worker-{color}"]
        assert scaled["spec"]["scaleTargetRef"] == {"name": deployment["metadata"]["name"]}
        base_scaled = _by_kind([K8S / "keda.yaml"])["ScaledObject", "sqs-worker"]
        assert scaled["spec"] | {"scaleTargetRef": None} == base_scaled["spec"] | {"scaleTargetRef": None}
    monitor = resources["PodMonitor", "sqs-worker"]["spec"]
    pdb = resources["PodDisruptionBudget", "sqs-worker"]["spec"]
    jobs = set()
    for labels in pods.values():
        assert monitor["selector"]["matchLabels"].items() <= labels.items()
        assert pdb["selector"]["matchLabels"].items() <= labels.items()
        jobs.add(labels[monitor["jobLabel"]])
    assert jobs == {"sqs-worker"}, "both colours must be scraped under the alert rules' job"


# -- blue/green on ECS --


def _validate_request(operation: str, params: dict[str, Any]) -> None:
    import botocore.session
    from botocore.validate import validate_parameters

    shape = botocore.session.get_session().get_service_model("ecs").operation_model(operation).input_shape
    assert shape is not None
    validate_parameters(params, shape)


def _ecs_env(task: dict[str, Any]) -> dict[str, str]:
    (container,) = task["containerDefinitions"]
    return {item["name"]: item["value"] for item in container["environment"]}


def test_ecs_blue_green_files_are_valid_api_requests() -> None:
    """Two task definitions and two services, each a valid RegisterTaskDefinition / CreateService request."""
    assert sorted(p.name for p in ECS_BLUE_GREEN.iterdir()) == sorted(
        f"{kind}-{color}.json" for kind in ("service", "task-definition") for color in COLORS
    )
    for color in COLORS:
        _validate_request(
            "RegisterTaskDefinition", load_json(ECS_BLUE_GREEN / f"task-definition-{color}.json")
        )
        _validate_request("CreateService", load_json(ECS_BLUE_GREEN / f"service-{color}.json"))


def test_ecs_task_definitions_differ_only_in_their_colour() -> None:
    """Each is deploy/ecs's task definition with WORKER_COLOR(_STATE) added; blue and green differ only in
    family and WORKER_COLOR; the settings validate and equal the Kubernetes colours'."""
    base = load_json(ECS / "task-definition.json")
    tasks = {color: load_json(ECS_BLUE_GREEN / f"task-definition-{color}.json") for color in COLORS}
    k8s = {color: _env(d["spec"]["template"]["spec"]["containers"][0]) for color, d in _colors().items()}
    for color, task in tasks.items():
        assert task["family"] == f"{base['family']}-{color}"
        env = _ecs_env(task)
        assert env["WORKER_COLOR"] == color
        settings = settings_from_env(env)
        assert settings.color == color
        assert {k: v for k, v in env.items() if k.startswith("WORKER_")} == {
            **_configmap(),
            **{k: v for k, v in k8s[color].items() if k.startswith("WORKER_")},
        }
        stripped = copy.deepcopy(task)
        stripped["family"] = base["family"]
        (container,) = stripped["containerDefinitions"]
        container["environment"] = [
            e for e in container["environment"] if not e["name"].startswith("WORKER_COLOR")
        ]
        assert stripped == base
    blue, green = copy.deepcopy(tasks["blue"]), copy.deepcopy(tasks["green"])
    green["family"] = blue["family"]
    for item in green["containerDefinitions"][0]["environment"]:
        if item["name"] == "WORKER_COLOR":
            item["value"] = "blue"
    assert green == blue


def test_ecs_services_run_their_colour_in_the_scaling_examples_cluster() -> None:
    """Each service runs its colour's family, keeps the standby running, and lives in deploy/ecs's cluster."""
    cluster = load_json(ECS / "scalable-target.json")["ResourceId"].split("/")[1]
    services = {color: load_json(ECS_BLUE_GREEN / f"service-{color}.json") for color in COLORS}
    for color, service in services.items():
        assert service["serviceName"] == service["taskDefinition"] == f"sqs-worker-{color}"
        assert service["cluster"] == cluster
        assert service["desiredCount"] >= 1, "the standby colour stays up (it is the instant rollback)"
        assert service["deploymentConfiguration"]["minimumHealthyPercent"] == 100
    blue, green = services["blue"], services["green"]
    assert {k: v for k, v in blue.items() if k not in {"serviceName", "taskDefinition", "tags"}} == {
        k: v for k, v in green.items() if k not in {"serviceName", "taskDefinition", "tags"}
    }


# -- the dashboard's row and the metrics it needs --


def test_rollout_metrics_are_exported_with_their_labels() -> None:
    """worker_canary_weight/state/transitions and worker_active are exported with the labels queried."""
    exported = exported_metrics()
    missing = sorted(name for name in ROLLOUT_METRICS if name not in exported)
    assert not missing, f"not exported by worker/telemetry/metrics.py: {missing}"
    for name, labels in ROLLOUT_METRICS.items():
        assert exported[name] == labels, name


def test_dashboard_has_a_rollout_row_with_its_panels() -> None:
    """A "Rollout" row with weight, state, per-version share, error ratio and p99, and the active colour."""
    panels = load_json(DASHBOARD)["panels"]
    (row,) = [p for p in panels if p["type"] == "row" and p["title"] == "Rollout"]
    later_rows = [
        p["gridPos"]["y"] for p in panels if p["type"] == "row" and p["gridPos"]["y"] > row["gridPos"]["y"]
    ]
    end = min(later_rows, default=10**6)
    mine = {
        p["title"]: " ".join(t["expr"] for t in p["targets"])
        for p in panels
        if p["type"] != "row" and row["gridPos"]["y"] < p["gridPos"]["y"] < end
    }
    wanted = {
        "Canary weight": ["worker_canary_weight"],
        "Canary state": ["worker_canary_state", "state"],
        "Share of handler runs by version": ["by (handler_version)", "worker_messages_processed_total"],
        "Error ratio by version": ["by (handler_version)", 'outcome!="succeeded"'],
        "Handler p99 by version": ["histogram_quantile(0.99,", "by (handler_version, le)"],
        "Active colour": ["worker_active", "by (color)"],
    }
    assert set(mine) == set(wanted)
    for title, needles in wanted.items():
        for needle in needles:
            assert needle in mine[title], f"{title}: {needle!r} not in its queries"
    assert sorted(ROLLOUT_METRICS.keys() - {"worker_canary_transitions_total"}) == sorted(
        name for name in ROLLOUT_METRICS if name in " ".join(mine.values())
    )


def test_docs_describe_every_file() -> None:
    """docs/rollouts-ecosystem.md has both sections and names every file of the four directories."""
    doc = DOC.read_text()
    assert "## Argo Rollouts and Flagger" in doc
    assert "## Blue/green on Kubernetes and ECS" in doc
    for directory in (ARGO, FLAGGER, BLUE_GREEN, ECS_BLUE_GREEN):
        for path in directory.iterdir():
            assert str(path.relative_to(ROOT)) in doc, f"{path.relative_to(ROOT)} is not described"
