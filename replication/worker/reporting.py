# twisted.internet.task and zope.interface have no annotations:
# mypy: disable-error-code="no-untyped-call"
"""What a worker tells its operator in its log about reaching its master and catching up.

* :class:`ConnectFailures` (pure, time passed in) decides which failed connection attempts
  are logged: the first of a run of failures, then at most one line per
  :data:`CONNECT_FAILURE_LOG_INTERVAL` seconds, counting the attempts in between (each of
  those is logged at DEBUG, so ``-v`` shows every one).
* :class:`ConnectionReporter` wraps the master's endpoint and the reconnect policy of the
  worker's ``ClientService``, so that failed connects, reconnects after a lost connection,
  and the first success after failures are logged with the delay before the next attempt.
* :func:`describe_resume` says where each stream resumes from (the ``REPLICATE`` lines).
* :class:`CatchupProgress` (pure) and :class:`CatchupReporter` (its timer) log, every
  :data:`CATCHUP_LOG_INTERVAL` seconds while a stream is catching up, the position, the
  newest token received and the rate, and a summary when a long catch-up ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import (
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from zope.interface import implementer

from replication.wire.commands import ReplicateCommand

log = logging.getLogger(__name__)

#: Seconds between two log lines about failed connection attempts of one run of failures.
CONNECT_FAILURE_LOG_INTERVAL = 30.0
#: Seconds between two progress lines of a stream that is catching up.
CATCHUP_LOG_INTERVAL = 5.0


class ConnectFailures:
    """Counts a run of failed connection attempts and decides which are logged: the first,
    then the first one at least ``interval`` seconds after the last logged one."""

    def __init__(self, interval: float = CONNECT_FAILURE_LOG_INTERVAL) -> None:
        self.interval = interval
        #: Failed attempts in this run.
        self.attempts = 0
        self._first_at: float | None = None
        self._logged_at: float | None = None
        self._unlogged = 0

    def failed(self, now: float) -> int | None:
        """Count an attempt that failed at ``now``. When it is to be logged, return how many
        attempts the line speaks for (those since the last line, this one included); else
        ``None``."""
        self.attempts += 1
        self._unlogged += 1
        if self._first_at is None:
            self._first_at = now
        if self._logged_at is not None and now - self._logged_at < self.interval:
            return None
        self._logged_at = now
        count, self._unlogged = self._unlogged, 0
        return count

    def since_first(self, now: float) -> float:
        """Seconds from the run's first failure to ``now`` (0 when none failed)."""
        return 0.0 if self._first_at is None else now - self._first_at

    def succeeded(self) -> None:
        """A connection was made: the run is over."""
        self.attempts = self._unlogged = 0
        self._first_at = self._logged_at = None


@implementer(IStreamClientEndpoint)
class _ReportingEndpoint:
    """An endpoint that tells its :class:`ConnectionReporter` how each connect ended."""

    def __init__(self, endpoint: IStreamClientEndpoint, reporter: ConnectionReporter) -> None:
        self._endpoint = endpoint
        self._reporter = reporter

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        d: Deferred[Any] = self._endpoint.connect(protocolFactory)
        return d.addCallbacks(self._reporter.connected, self._reporter.connect_failed)


class ConnectionReporter:
    """Logs how the worker reaches its master ``master`` (the endpoint description).

    Wrap the endpoint with :meth:`endpoint` and the ``ClientService`` retry policy with
    :meth:`retry_policy`. ``ClientService`` asks the policy for a delay after every failed
    connect and after every lost connection, right after the endpoint's ``connect`` failed
    (if it did), which is how the two are told apart:

    * a failed connect: WARNING ``cannot connect to master ...: <reason>; retrying in <d>s``
      for the first of a run, then ``still cannot connect`` with the number of attempts at
      most every ``interval`` seconds (:class:`ConnectFailures`); DEBUG for the others;
    * a lost connection: INFO ``reconnecting to master ... in <d>s``;
    * a connection made after failures: INFO ``reached master ... after N failed attempts
      over <t>s``.
    """

    def __init__(
        self, master: str, clock: IReactorTime, interval: float = CONNECT_FAILURE_LOG_INTERVAL
    ) -> None:
        self.master = master
        self.clock = clock
        self.failures = ConnectFailures(interval)
        self._reason: str | None = None

    def endpoint(self, endpoint: IStreamClientEndpoint) -> IStreamClientEndpoint:
        """``endpoint``, reporting here how each connect ends."""
        return _ReportingEndpoint(endpoint, self)

    def retry_policy(self, policy: Callable[[int], float]) -> Callable[[int], float]:
        """``policy`` (attempt number -> delay), logging each attempt as it is scheduled."""

        def delay_for(attempt: int) -> float:
            delay = policy(attempt)
            self.retrying(delay)
            return delay

        return delay_for

    def connected(self, protocol: Any) -> Any:
        """The endpoint connected (passes ``protocol`` on)."""
        failures = self.failures
        if failures.attempts:
            log.info(
                "reached master %s after %d failed attempts over %.0fs", self.master,
                failures.attempts, failures.since_first(self.clock.seconds()),
            )
        failures.succeeded()
        self._reason = None
        return protocol

    def connect_failed(self, failure: Failure) -> Failure:
        """The endpoint could not connect (passes ``failure`` on). A connect cancelled
        because the worker stops is not a failure to report."""
        if not failure.check(CancelledError):
            self._reason = failure.getErrorMessage()
        return failure

    def retrying(self, delay: float) -> None:
        """The next attempt is in ``delay`` seconds, after a failed connect (when one was
        just reported) or a lost connection."""
        reason, self._reason = self._reason, None
        if reason is None:
            log.info("reconnecting to master %s in %.1fs", self.master, delay)
            return
        failures = self.failures
        now = self.clock.seconds()
        count = failures.failed(now)
        if count is None:
            log.debug(
                "cannot connect to master %s (attempt %d): %s; retrying in %.1fs",
                self.master, failures.attempts, reason, delay,
            )
        elif failures.attempts == 1:
            log.warning(
                "cannot connect to master %s: %s; retrying in %.1fs", self.master, reason, delay
            )
        else:
            log.warning(
                "still cannot connect to master %s: %s (%d failed attempts since the last "
                "report, %d over %.0fs); retrying in %.1fs", self.master, reason, count,
                failures.attempts, failures.since_first(now), delay,
            )


def describe_resume(
    commands: Iterable[ReplicateCommand], recorded: Callable[[str], int | None]
) -> str:
    """Where each stream resumes from, for the log: ``events after token 41, presence from
    its earliest retained token (no position recorded), typing from now (no position
    recorded, from: latest)``. ``recorded`` is a stream's recorded position."""
    parts = []
    for command in commands:
        if command.token is None:
            parts.append(f"{command.stream} from now (no position recorded, from: latest)")
        elif recorded(command.stream) is None:
            parts.append(
                f"{command.stream} from its earliest retained token (no position recorded)"
            )
        else:
            parts.append(f"{command.stream} after token {command.token}")
    return ", ".join(parts)


def describe_vector_resume(commands: Iterable[ReplicateCommand]) -> str:
    """Where each stream resumes from under protocol version 2, for the log: ``events after
    <origin>:41, <origin>:7 (every other origin from its start), presence from the start of
    every origin (no position recorded), typing from now (no position recorded, from:
    latest)``."""
    parts = []
    for command in commands:
        if command.vector is None:
            parts.append(f"{command.stream} from now (no position recorded, from: latest)")
        elif not command.vector:
            parts.append(
                f"{command.stream} from the start of every origin (no position recorded)"
            )
        else:
            at = ", ".join(f"{origin}:{token}" for origin, token in command.vector)
            parts.append(f"{command.stream} after {at} (every other origin from its start)")
    return ", ".join(parts)


@dataclass
class CatchupReport:
    """One progress line of a stream that is catching up."""

    stream: str
    #: The recorded position now, and the newest token received (``None``: none yet).
    position: int | None
    newest: int | None
    #: Tokens handled since the previous report (or the start) and over how many seconds.
    handled: int
    seconds: float

    @property
    def rate(self) -> float:
        """Tokens handled per second since the previous report."""
        return self.handled / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Catchup:
    started_at: float
    start_position: int
    reported_at: float
    reported_position: int


class CatchupProgress:
    """Which streams are catching up (from their ``REPLICATE`` to their ``POSITION``), and
    which are due a progress report: those catching up for ``interval`` seconds since
    their start or their last report."""

    def __init__(self, interval: float = CATCHUP_LOG_INTERVAL) -> None:
        self.interval = interval
        self._streams: dict[str, _Catchup] = {}

    @property
    def active(self) -> bool:
        """Whether any stream is catching up."""
        return bool(self._streams)

    def started(self, stream: str, position: int | None, now: float) -> None:
        """``stream`` starts catching up at ``now`` from ``position``."""
        at = position or 0
        self._streams[stream] = _Catchup(now, at, now, at)

    def finished(self, stream: str, token: int, now: float) -> tuple[int, float] | None:
        """``stream`` caught up at ``token``. For a long catch-up (``interval`` or more),
        ``(tokens caught up, seconds)``; else (or when it was not catching up) ``None``."""
        catchup = self._streams.pop(stream, None)
        if catchup is None or now - catchup.started_at < self.interval:
            return None
        return max(token - catchup.start_position, 0), now - catchup.started_at

    def stopped(self) -> None:
        """The connection is gone: no stream is catching up any more."""
        self._streams.clear()

    def due(
        self, now: float, position: Callable[[str], int | None], newest: Callable[[str], int | None]
    ) -> list[CatchupReport]:
        """The reports due at ``now``, given each stream's recorded ``position`` and the
        ``newest`` token received."""
        reports = []
        for stream, catchup in self._streams.items():
            if now - catchup.reported_at < self.interval:
                continue
            at = position(stream)
            handled = max((at or 0) - catchup.reported_position, 0)
            reports.append(CatchupReport(
                stream, at, newest(stream), handled, now - catchup.reported_at
            ))
            catchup.reported_at = now
            catchup.reported_position = max(at or 0, catchup.reported_position)
        return reports


class CatchupReporter:
    """Logs catch-up progress (:class:`CatchupProgress`) on ``clock``: a timer ticks every
    ``interval / 5`` seconds while a stream is catching up (and only then); each due stream
    gets an INFO line, and a long catch-up a summary when its ``POSITION`` arrives.

    :param position: a stream's recorded position.
    :param newest: the newest token of a stream received from the master.
    """

    def __init__(
        self,
        clock: IReactorTime,
        position: Callable[[str], int | None],
        newest: Callable[[str], int | None],
        interval: float = CATCHUP_LOG_INTERVAL,
    ) -> None:
        self.clock = clock
        self.progress = CatchupProgress(interval)
        self._position = position
        self._newest = newest
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock

    def started(self, stream: str, position: int | None) -> None:
        """``stream`` was asked for from ``position``."""
        self.progress.started(stream, position, self.clock.seconds())
        if not self._loop.running:
            self._loop.start(self.progress.interval / 5, now=False)

    def caught_up(self, stream: str, token: int) -> None:
        """The master's ``POSITION``: ``stream`` is live at ``token``."""
        done = self.progress.finished(stream, token, self.clock.seconds())
        if done is not None:
            tokens, seconds = done
            log.info(
                "%s: caught up at token %d (%d tokens in %.1fs)", stream, token, tokens, seconds
            )
        self._stop_if_idle()

    def stopped(self) -> None:
        """The connection is gone."""
        self.progress.stopped()
        self._stop_if_idle()

    @property
    def ticking(self) -> bool:
        """Whether the progress timer runs (only while a stream is catching up)."""
        return bool(self._loop.running)

    def _stop_if_idle(self) -> None:
        if not self.progress.active and self._loop.running:
            self._loop.stop()

    def _tick(self) -> None:
        for report in self.progress.due(self.clock.seconds(), self._position, self._newest):
            log.info(
                "%s: catching up, at token %s, newest received %s: %d tokens in %.1fs "
                "(%.0f tokens/s)", report.stream,
                "-" if report.position is None else report.position,
                "-" if report.newest is None else report.newest,
                report.handled, report.seconds, report.rate,
            )
