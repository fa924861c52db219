"""``worker topology``'s report (pure): what it found and did (``Outcome``), as text or JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from worker import settings as worker_settings
from worker.ops.topology_plan import all_ok, manual
from worker.ops.topology_records import Arns, Check, Observed, Status
from worker.ops.topology_spec import Spec

#: How long the verification waits for changes already applied to show: SQS and SNS take up to 60 s to
#: propagate attribute changes (SQS up to 15 minutes for MessageRetentionPeriod); never applied twice.
SETTLE_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """What ``worker topology`` found (after its fixes, unless ``--check``) and what it did."""

    spec: Spec
    arns: Arns
    seen: Observed
    checks: list[Check]
    done: list[str]
    check_only: bool
    #: Changes applied that AWS did not show yet when the verification gave up waiting.
    unsettled: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every check passed."""
        return all_ok(self.checks)

    @property
    def env(self) -> dict[str, str]:
        """The WORKER_* variables that point ``worker run`` at this topology (what exists of them)."""
        env = {}
        if self.seen.queue.url:
            env[worker_settings.env_name("queue_url")] = self.seen.queue.url
        if self.seen.dlq.url:
            env[worker_settings.env_name("dlq_url")] = self.seen.dlq.url
        return env


def check_line(check: Check) -> str:
    """One check on one line: status, what, and what was found against what is expected."""
    if check.status == Status.OK:
        detail = check.found
    elif check.status == Status.MISSING:
        detail = f"expected {check.expected}" + (f" {check.found}" if check.found.startswith("(") else "")
    else:
        detail = f"found {check.found}; expected {check.expected}"
    if check.manual:
        detail += f"; to do by hand: {check.manual}"
    return f"  {check.status.value:<8} {check.what:<48} {detail}"


def render_text(outcome: Outcome, notes: list[str]) -> str:
    """The output for a terminal."""
    spec = outcome.spec
    lines = [
        f"topology: topic {spec.topic} -> queue {spec.queue} (RedrivePolicy -> {spec.dlq}, maxReceiveCount "
        f"{spec.max_receive_count}); subscription DLQ {spec.subscription_dlq}"
        + ("; FIFO" if spec.fifo else "")
    ]
    lines += [f"  note: {note}" for note in notes]
    if outcome.done:
        lines += ["", "Done"] + [f"  {text}" for text in outcome.done]
    lines += ["", "Checks"] + [check_line(c) for c in outcome.checks]
    counts = {s: sum(1 for c in outcome.checks if c.status == s) for s in Status}
    summary = ", ".join(f"{n} {s.value}" for s, n in counts.items() if n)
    lines += ["", f"{len(outcome.checks)} checks: {summary}"]
    blocked = manual(outcome.checks)
    if outcome.unsettled:
        lines.append(
            f"{len(outcome.unsettled)} applied changes did not show within {SETTLE_SECONDS:.0f} s (AWS "
            "propagates attributes within 60 s, MessageRetentionPeriod within 15 min): rerun --check later"
        )
    if blocked:
        lines.append("nothing was changed: fix the checks marked 'to do by hand' first, then rerun")
    elif outcome.check_only and not outcome.ok:
        lines.append("run `worker topology` without --check (same arguments) to create and fix them")
    elif not outcome.check_only and not outcome.done and outcome.ok:
        lines.append("nothing to change")
    if outcome.ok:
        lines += ["", "Set for `worker run`:"] + [f"  {k}={v}" for k, v in outcome.env.items()]
    return "\n".join(lines)


def render_json(outcome: Outcome, notes: list[str]) -> dict[str, Any]:
    """The output for ``--json``."""
    spec, arns = outcome.spec, outcome.arns
    return {
        "mode": "check" if outcome.check_only else "create",
        "ok": outcome.ok,
        "fifo": spec.fifo,
        "topic": {"name": spec.topic, "arn": arns.topic},
        "queue": {"name": spec.queue, "arn": arns.queue, "url": outcome.seen.queue.url},
        "dlq": {"name": spec.dlq, "arn": arns.dlq, "url": outcome.seen.dlq.url},
        "subscription_dlq": {
            "name": spec.subscription_dlq,
            "arn": arns.subscription_dlq,
            "url": outcome.seen.subscription_dlq.url,
        },
        "subscription_arn": outcome.seen.subscription.arn,
        "max_receive_count": spec.max_receive_count,
        "notes": notes,
        "done": outcome.done,
        "unsettled": outcome.unsettled,
        "checks": [c.as_dict() for c in outcome.checks],
        "env": outcome.env if outcome.ok else {},
    }
