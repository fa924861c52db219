"""bench.publish: the results section of docs/PERFORMANCE.md made from one commit's JSON only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import publish


def _doc(sha: str = "a" * 40, dirty: bool = False) -> dict[str, Any]:
    return {
        "date": "2026-12-06T02:00:00+00:00",
        "emulator": "LocalStack 4.13.1 (host mode)",
        "emulator_kind": "localstack",
        "git": {"sha": sha, "dirty": dirty, "changed": []},
        "machine": {"cores": 2, "cpu": "AMD EPYC", "python": "3.11.7", "load_average_at_start": [0.3, 0, 0]},
        "repeat": 5,
        "seed": 7,
        "throughput": [
            {
                "consumer": "raw",
                "handler": "noop",
                "from_start_msgs_per_s": 1500.0,
                "steady_msgs_per_s": 1800.0,
                "cpu_s_per_1k": 0.29,
                "peak_rss_mb": 55.0,
            }
        ],
        "targets": [
            {"target": "T1", "value": 0.97, "ci95": [0.95, 0.99], "met": True},
            {"target": "T2", "value": 1.3, "ci95": [1.2, 1.4], "met": False},
            {"target": "T3", "value": None, "ci95": None, "met": None},
        ],
    }


def test_targets_show_met_missed_and_not_measured_with_their_interval() -> None:
    """Each target is one row: met, **missed** or not measured, with the median and its 95 % interval."""
    table = publish.targets_table(_doc()["targets"])
    assert "| met | T1 | 0.97 [0.95-0.99] |" in table
    assert "| **missed** | T2 | 1.3 [1.2-1.4] |" in table
    assert "| not measured | T3 | - |" in table


def test_the_page_section_is_replaced_between_its_markers_and_names_the_commit(tmp_path: Path) -> None:
    """Publishing twice rewrites only the marked section (the text around it stays), with the commit and a
    link to the JSON copy kept beside the page."""
    page = tmp_path / "PERFORMANCE.md"
    page.write_text("# Performance\n\nintro\n")
    run = tmp_path / "run.json"
    run.write_text(json.dumps(_doc()))
    store = tmp_path / "bench-results"
    for _ in range(2):
        assert publish.main(["--main", str(run), "--page", str(page), "--store", str(store)]) == 0
    text = page.read_text()
    assert text.startswith("# Performance\n\nintro\n")
    assert text.count(publish.BEGIN) == 1
    assert text.count(publish.END) == 1
    assert f"Measured on commit `{'a' * 40}`, clean tree" in text
    copy = "2026-12-06-comparison-localstack-aaaaaaa.json"
    assert (store / copy).exists()
    assert f"](bench-results/{copy})" in text
    assert "| met | T1 | 0.97 [0.95-0.99] |" in text


def test_files_of_different_or_dirty_commits_are_refused_unless_allowed(tmp_path: Path) -> None:
    """A run of another commit or of a dirty tree is not published as the commit's figures unless
    --allow-mixed is given, and then the page says so."""
    page = tmp_path / "PERFORMANCE.md"
    page.write_text("# Performance\n")
    main, other = tmp_path / "main.json", tmp_path / "other.json"
    main.write_text(json.dumps(_doc()))
    other.write_text(json.dumps({**_doc(sha="b" * 40), "runs": []}))
    argv = ["--main", str(main), "--openloop", str(other), "--page", str(page), "--store", str(tmp_path)]
    with pytest.raises(SystemExit):
        publish.main(argv)
    dirty = tmp_path / "dirty.json"
    dirty.write_text(json.dumps(_doc(dirty=True)))
    with pytest.raises(SystemExit):
        publish.main(["--main", str(dirty), "--page", str(page), "--store", str(tmp_path)])
    assert publish.main([*argv, "--allow-mixed"]) == 0
    assert "**Mixed or dirty**" in page.read_text()


def test_a_soak_run_is_listed_with_its_verdicts(tmp_path: Path) -> None:
    """The soak's three figures (long flow, 1,000 concurrent handlers, the memory run) appear as lines."""
    soak = {
        "flow": {
            "messages": 100_000,
            "seconds": 80.0,
            "rss_after_warmup_mb": 90.0,
            "rss_end_mb": 88.0,
            "growth_pct": -2.2,
            "slope_mb_per_min": -1.0,
            "met": True,
        },
        "concurrent": {"peak_concurrent_handlers": 1000, "peak_rss_mb": 102.5, "met": True},
        "memory": {
            "peak_concurrent_handlers": 1000,
            "body_bytes": 262_000,
            "peak_rss_mb": 627.0,
            "in_flight_bodies_mb": 249.9,
            "met": True,
        },
    }
    page = tmp_path / "PERFORMANCE.md"
    page.write_text("# Performance\n")
    main, soaked = tmp_path / "main.json", tmp_path / "soak.json"
    main.write_text(json.dumps(_doc()))
    soaked.write_text(json.dumps({**_doc(), "soak": soak}))
    publish.main(["--main", str(main), "--soak", str(soaked), "--page", str(page), "--store", str(tmp_path)])
    text = page.read_text()
    assert "- soak: 100000 messages in 80 s, RSS 90.0 -> 88.0 MB" in text
    assert "1000 concurrent HTTP calls on 262,000-byte bodies, peak RSS 627.0 MB" in text


def test_sizing_advice_is_shown_as_its_sentences(tmp_path: Path) -> None:
    """bench.plot's advice entries (dicts with a text) are listed as their sentences, not as JSON."""
    page = tmp_path / "PERFORMANCE.md"
    page.write_text("# Performance\n")
    main, grid = tmp_path / "main.json", tmp_path / "scaling.json"
    main.write_text(json.dumps(_doc()))
    advice = [{"handler_ms": 0, "text": "no-op handler: WORKER_POLLERS=2 WORKER_CONCURRENCY=100"}]
    grid.write_text(json.dumps({**_doc(), "advice": advice}))
    publish.main(["--main", str(main), "--scaling", str(grid), "--page", str(page), "--store", str(tmp_path)])
    assert "- no-op handler: WORKER_POLLERS=2 WORKER_CONCURRENCY=100\n" in page.read_text()


def test_an_engine_run_shows_each_tree_and_the_ratio_to_its_baseline(tmp_path: Path) -> None:
    """A bench.engine_cpu run is its own section: each tree's CPU per message with its interval and commit,
    and the paired ratio to the baseline, from the JSON kept under an engine-stub name."""
    from bench.engine_cpu import summarize

    runs = {
        "this": [{"cpu_ms_per_msg": v, "msgs_per_s": 9000.0} for v in (0.090, 0.092, 0.091)],
        "baseline": [{"cpu_ms_per_msg": v, "msgs_per_s": 8000.0} for v in (0.110, 0.111, 0.109)],
    }
    engine = {
        **_doc(),
        "kind": "engine",
        "emulator": "none: an in-process SQS stub",
        "emulator_kind": "stub",
        "messages": 20000,
        "trees": {
            "this": {"path": "/a", "git": {"sha": "a" * 40, "dirty": False}},
            "baseline": {"path": "/b", "git": {"sha": "b" * 40, "dirty": False}},
        },
        "runs": runs,
        "summary": summarize(runs),
    }
    page = tmp_path / "PERFORMANCE.md"
    page.write_text("# Performance\n")
    main_run, engine_run = tmp_path / "main.json", tmp_path / "engine.json"
    main_run.write_text(json.dumps(_doc()))
    engine_run.write_text(json.dumps(engine))
    store = tmp_path / "bench-results"
    argv = ["--main", str(main_run), "--engine", str(engine_run), "--page", str(page), "--store", str(store)]
    assert publish.main(argv) == 0
    text = page.read_text()
    assert "### The worker's own CPU per message" in text
    assert "| this | `aaaaaaa` | 0.0910 [0.0900-0.0920] | 9,000 |" in text
    assert "| baseline | `bbbbbbb` | 0.1100 [0.1090-0.1110] | 8,000 |" in text
    assert "this / baseline, CPU per message: 0.829 [0.818-0.835] (paired by round)" in text
    assert (store / "2026-12-06-engine-stub-aaaaaaa.json").exists()
