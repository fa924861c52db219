"""Blue/green in ``worker run``: follow the shared flag, poll only while this colour is active, beat.

Every ``FLAG_INTERVAL_SECONDS`` the replica reads the flag (``WORKER_COLOR_STATE``); while it names the other
colour the pollers hold (parked receives are cancelled at once, so messages are not taken after the flip; busy
ones return and what they bring is processed), in-flight messages finish, and the replica reports
``draining`` until none is left, then ``standby``. Its heartbeat (state, in flight, handler calls processed
and failed) goes to the store every ``HEARTBEAT_INTERVAL_SECONDS``: ``worker switch`` reads them to know the
target colour is alive and the old one has drained. A flag that cannot be read keeps the last known state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import anyio
from anyio.abc import TaskStatus

from worker.engine.color_store import HEARTBEAT_INTERVAL_SECONDS, Color, ColorStore, FleetState, Heartbeat
from worker.engine.rollout_store import StoreError
from worker.telemetry.metrics import Metrics

log = logging.getLogger("worker.color")

#: How often the flag is read (a switch takes effect within this, plus the drain).
FLAG_INTERVAL_SECONDS = 2.0
#: Longest sleep of a holding poller before it looks again.
HOLD_STEP_SECONDS = 1.0


class ColorController:
    """Whether this replica's colour is active, kept from the store; a receive hold for the consumer."""

    def __init__(
        self,
        *,
        store: ColorStore,
        color: Color,
        replica: str,
        metrics: Metrics,
        in_flight: Callable[[], int],
        counts: Callable[[], tuple[int, int]],
        on_standby: Callable[[], None],
    ) -> None:
        self.store = store
        self.color = color
        self.replica = replica
        self.active = False  # until the flag was read: never poll for a colour that may be on standby
        self.flag_id = ""
        self._in_flight = in_flight
        self._counts = counts
        self._on_standby = on_standby
        self._gauge = metrics.active.labels(color)
        self._gauge.set(0)
        self._unreachable = False
        self._changed = anyio.Event()

    def attach(self, in_flight: Callable[[], int], on_standby: Callable[[], None]) -> None:
        """Point the heartbeat and the standby switch at the consumer (it exists after start-up)."""
        self._in_flight = in_flight
        self._on_standby = on_standby

    @property
    def state(self) -> FleetState:
        """What the heartbeat says: active, draining (standby with messages in flight) or standby."""
        if self.active:
            return "active"
        return "draining" if self._in_flight() > 0 else "standby"

    def standby_reason(self) -> str | None:
        """For /readyz's body: None while active."""
        return None if self.active else f"standby: {self.color} is not the active colour"

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Read the flag once before messages flow, then keep reading it and beating."""
        await self.refresh()
        await self.beat()
        task_status.started()
        last_beat = time.monotonic()
        while True:
            await anyio.sleep(FLAG_INTERVAL_SECONDS)
            await self.refresh()
            if time.monotonic() - last_beat >= HEARTBEAT_INTERVAL_SECONDS or not self.active:
                await self.beat()
                last_beat = time.monotonic()

    async def refresh(self) -> None:
        """Read the flag and follow it (the last known state stays while the store is unreachable)."""
        try:
            flag = await self.store.read_active()
        except StoreError as exc:
            if not self._unreachable:
                self._unreachable = True
                log.warning(
                    "colour flag unreachable: keeping the last known state",
                    extra={"event": "color_store_unreachable", "active": self.active, "error": str(exc)},
                )
            return
        self._unreachable = False
        self.flag_id = flag.id
        active = flag.active == self.color
        if active != self.active:
            self.active = active
            self._gauge.set(1 if active else 0)
            log.info(
                f"colour {self.color} is {'active' if active else 'on standby'}",
                extra={"event": "color_changed", "color": self.color, "active": active, "flag": flag.id},
            )
            if not active:
                self._on_standby()
            self._changed.set()
            self._changed = anyio.Event()

    async def beat(self) -> None:
        """Publish this replica's heartbeat (a failure is logged by refresh's next outage message only)."""
        processed, failed = self._counts()
        heartbeat = Heartbeat(
            color=self.color,
            replica=self.replica,
            at=time.time(),
            state=self.state,
            in_flight=self._in_flight(),
            processed=processed,
            failed=min(failed, processed),
            flag=self.flag_id,
        )
        try:
            await self.store.publish_heartbeat(heartbeat)
        except StoreError:
            log.debug("heartbeat not written", extra={"event": "color_heartbeat_failed"})

    async def wait_until_receiving(self, stopping: anyio.Event, turned: Callable[[], None]) -> None:
        """The consumer's hold: sleep while this colour is on standby (a stop or a flip ends it)."""
        while not self.active and not stopping.is_set():
            turned()  # a standby loop is a healthy loop
            with anyio.move_on_after(HOLD_STEP_SECONDS):
                await self._changed.wait()
