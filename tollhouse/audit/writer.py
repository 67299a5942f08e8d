"""AuditTrail: group-commits records onto this node's chain and signs its checkpoints.

`commit(body)` returns once the record is in the database: the endpoint awaits it before
releasing a tools/call answer (SECURITY_GOALS A3). Records that need not hold up an answer
(tools/list, refused authentications, admin reads) go through `submit`, into the same queue.
One task drains the queue: everything waiting goes out in one transaction (up to
`write_batch`), so a burst of concurrent calls costs one commit, not one each.

When the store cannot commit, waiting callers get `AuditUnavailable` at once (the endpoint
then fails closed, or not, per settings) and the batch stays queued, retried with backoff, so
nothing accepted is dropped while memory allows (`queue_limit`; beyond it the oldest unawaited
record is dropped and counted). `healthy` is False from a failed commit until the next good
one, so the endpoint can refuse a call before it reaches the upstream.

Checkpoints: after a commit, when `checkpoint_records` records or `checkpoint_seconds` have
passed since the last one, the head is signed (Ed25519, keyring purpose `audit-checkpoint`)
and stored, and appended to `checkpoint_file` when one is configured (the external copy).
"""

from __future__ import annotations

import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.abc
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tollhouse.audit.chain import CheckpointSigner, public_key_text
from tollhouse.audit.records import rfc3339_ms
from tollhouse.auth.keyring import KeyRing
from tollhouse.registry.audit_store import SqlAuditStore
from tollhouse.registry.usage_store import UsageRow, insert_usage

__all__ = ["PURPOSE", "AuditTrail", "AuditUnavailable", "Passengers", "signing_keys"]

logger = logging.getLogger("tollhouse.audit")

PURPOSE = "audit-checkpoint"


class AuditUnavailable(Exception):
    """The record could not be committed (the audit store is down or too slow)."""


class Passengers(Protocol):
    """Rows another writer lets this one commit in its transactions (usage events: M4)."""

    @property
    def sinks(self) -> tuple[str, ...]:
        """The usage sinks (one outbox row each)."""
        ...

    @property
    def waiting(self) -> int:
        """Rows waiting for a commit."""
        ...

    def carried_by(self, wake: Callable[[], None] | None) -> None:
        """Start (a wake callback) or stop (None) riding in this writer's transactions."""
        ...

    def take(self) -> list[UsageRow]:
        """The rows for the next transaction."""
        ...

    def landed(self, batch: Sequence[UsageRow]) -> None:
        """They were committed."""
        ...

    def returned(self, batch: Sequence[UsageRow]) -> None:
        """They were not: queue them again."""
        ...


@dataclass
class _Pending:
    body: Mapping[str, Any]
    done: anyio.Event | None = None
    error: BaseException | None = None


def signing_keys(ring: KeyRing) -> dict[str, Ed25519PublicKey]:
    """The checkpoint verification keys, by key id: one per master key in the ring."""
    return {
        kid: Ed25519PrivateKey.from_private_bytes(seed).public_key()
        for kid, seed in ring.derive_all(PURPOSE).items()
    }


class AuditTrail:
    """This node's writer of the audit trail."""

    def __init__(
        self,
        store: SqlAuditStore,
        node: str,
        ring: Callable[[], KeyRing],
        *,
        write_batch: int = 500,
        queue_limit: int = 100_000,
        checkpoint_seconds: float = 60.0,
        checkpoint_records: int = 10_000,
        checkpoint_file: str | None = None,
        linger_seconds: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._linger = linger_seconds
        self.store = store
        self.node = node
        self._ring = ring
        self._batch = write_batch
        self._limit = queue_limit
        self._every_seconds = checkpoint_seconds
        self._every_records = checkpoint_records
        self._checkpoint_file = Path(checkpoint_file) if checkpoint_file else None
        self._clock = clock
        self._queue: deque[_Pending] = deque()
        self._passengers: Passengers | None = None
        self._in_flight = 0
        self._wake: anyio.Event | None = None
        self._idle: list[anyio.Event] = []
        self._since_checkpoint = 0
        self._last_checkpoint = clock()
        self._head: tuple[int, str] | None = None
        self.healthy = True
        self.written = 0
        self.dropped = 0
        self.failures = 0
        self.checkpoints = 0
        self.last_commit: float | None = None  # monotonic time of the last good commit

    # -- the request path ---------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Records accepted but not yet committed (the audit lag, in records)."""
        return len(self._queue) + self._in_flight

    @property
    def running(self) -> bool:
        """True while the writer task runs."""
        return self._wake is not None

    async def commit(self, body: Mapping[str, Any]) -> None:
        """Queue `body` and return once it is committed.

        Raises:
            AuditUnavailable: the writer is not running, or the store refused the batch holding
                this record (the record stays queued and is retried; the caller decides whether
                to answer anyway).
        """
        if self._wake is None:
            raise AuditUnavailable("the audit writer is not running")
        pending = _Pending(body, anyio.Event())
        self._enqueue(pending)
        assert pending.done is not None
        await pending.done.wait()
        if pending.error is not None:
            raise AuditUnavailable("the audit record was not committed") from pending.error

    def submit(self, body: Mapping[str, Any]) -> None:
        """Queue `body` without waiting (never blocks; committed with the next batch)."""
        self._enqueue(_Pending(body))

    def _enqueue(self, pending: _Pending) -> None:
        if len(self._queue) >= self._limit:
            for index, old in enumerate(self._queue):
                if old.done is None:  # drop the oldest record nobody is waiting for
                    del self._queue[index]
                    self.dropped += 1
                    if self.dropped == 1 or self.dropped % 1000 == 0:
                        logger.error("audit queue full: %d records dropped so far", self.dropped)
                    break
        self._queue.append(pending)
        if self._wake is not None:
            self._wake.set()

    async def flush(self) -> None:
        """Wait until every record queued so far is committed (or the writer stopped)."""
        if self.queued == 0 or self._wake is None:
            return
        idle = anyio.Event()
        self._idle.append(idle)
        self._wake.set()
        await idle.wait()

    # -- the writer task ----------------------------------------------------------------------

    def carry(self, passengers: Passengers) -> None:
        """Commit `passengers`' rows in this writer's transactions (call before `run`).

        A call's usage event is queued before its audit record, so both land in the same
        transaction, and a busy gateway pays one commit for both (SECURITY_GOALS M4).
        """
        self._passengers = passengers

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _idle_now(self) -> bool:
        return not self._queue and (self._passengers is None or not self._passengers.waiting)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Commit batches and checkpoint until cancelled; on the way out, commit what is left."""
        self._wake = anyio.Event()
        if self._passengers is not None:
            self._passengers.carried_by(self._poke)
        task_status.started()
        backoff = 0.02
        try:
            while True:
                if self._idle_now():
                    for waiter in self._idle:
                        waiter.set()
                    self._idle.clear()
                    with anyio.move_on_after(self._until_checkpoint()):
                        await self._wake.wait()
                    self._wake = anyio.Event()
                    await self._maybe_checkpoint()
                    continue
                if self._linger and len(self._queue) < self._batch:
                    # A commit costs far more than a record: gather what arrives meanwhile.
                    await anyio.sleep(self._linger)
                if await self._commit_batch():
                    backoff = 0.02
                    await self._maybe_checkpoint()
                else:
                    with anyio.move_on_after(backoff):
                        # A new waiter should not sit out the whole backoff after a failure: it
                        # fails at once (healthy is False) unless a retry succeeds.
                        await self._wake.wait()
                    self._wake = anyio.Event()
                    backoff = min(backoff * 2, 2.0)
        finally:
            self._wake = None
            with anyio.CancelScope(shield=True) as scope:
                scope.deadline = anyio.current_time() + 5
                while not self._idle_now() and await self._commit_batch():
                    pass
                if self._since_checkpoint:
                    await self._checkpoint()
            if self._passengers is not None:
                self._passengers.carried_by(None)  # what is left, its own writer commits
            for pending in self._queue:
                if pending.done is not None:
                    pending.error = AuditUnavailable("the gateway is stopping")
                    pending.done.set()
            for waiter in self._idle:
                waiter.set()

    def _until_checkpoint(self) -> float:
        if not self._since_checkpoint:
            return self._every_seconds
        return max(0.0, self._last_checkpoint + self._every_seconds - self._clock())

    async def _commit_batch(self) -> bool:
        batch = [self._queue.popleft() for _ in range(min(self._batch, len(self._queue)))]
        self._in_flight = len(batch)
        riders: list[UsageRow] = self._passengers.take() if self._passengers is not None else []
        extra = None
        if riders and self._passengers is not None:
            sinks = self._passengers.sinks
            extra = functools.partial(insert_usage, rows=riders, sinks=sinks, now=datetime.now(UTC))
        try:
            sealed = await self.store.append(self.node, [p.body for p in batch], head=self._head, extra=extra)
        except Exception as exc:
            if self._passengers is not None:
                self._passengers.returned(riders)
            self.failures += 1
            if self.healthy:
                logger.error("audit records not committed (%d): %s; retrying", len(batch), type(exc).__name__)
            self.healthy = False
            self._queue.extendleft(reversed([_Pending(p.body) for p in batch]))
            for pending in batch:
                if pending.done is not None:
                    pending.error = exc
                    pending.done.set()
            return False
        finally:
            self._in_flight = 0
        if self._passengers is not None:
            self._passengers.landed(riders)
        if not self.healthy:
            logger.warning("audit store writable again")
        self.healthy = True
        self.written += len(sealed)
        self.last_commit = self._clock()
        self._since_checkpoint += len(sealed)
        if sealed:
            self._head = (int(sealed[-1]["seq"]), str(sealed[-1]["hash"]))
        for pending in batch:
            if pending.done is not None:
                pending.done.set()
        return True

    async def _maybe_checkpoint(self) -> None:
        if not self._since_checkpoint:
            return
        due = self._clock() - self._last_checkpoint >= self._every_seconds
        if due or self._since_checkpoint >= self._every_records:
            await self._checkpoint()

    async def _checkpoint(self) -> dict[str, Any] | None:
        try:
            return await self.checkpoint()
        except Exception as exc:
            logger.error("audit checkpoint not stored: %s; retrying later", type(exc).__name__)
            return None

    async def checkpoint(self) -> dict[str, Any] | None:
        """Sign this node's current head and store the checkpoint (None for an empty chain).

        Raises:
            Exception: the store failed (the next scheduled checkpoint retries).
        """
        seq, head = self._head if self._head is not None else await self.store.head(self.node)
        self._since_checkpoint = 0
        self._last_checkpoint = self._clock()
        if seq == 0:
            return None
        ring = self._ring()
        signer = CheckpointSigner(ring.derive(PURPOSE), ring.active_kid)
        checkpoint = signer.checkpoint(self.node, seq, head, rfc3339_ms())
        if await self.store.add_checkpoint(checkpoint):
            self.checkpoints += 1
            if self._checkpoint_file is not None:
                await anyio.to_thread.run_sync(_publish, self._checkpoint_file, checkpoint)
        return checkpoint

    def public_keys(self) -> list[dict[str, str]]:
        """The checkpoint verification keys, for exports and the admin API."""
        return [
            {"key_id": kid, "public_key": public_key_text(key)}
            for kid, key in signing_keys(self._ring()).items()
        ]

    def status(self) -> dict[str, Any]:
        """Writer state for /metrics and the admin API."""
        lag = None if self.last_commit is None else round(self._clock() - self.last_commit, 3)
        return {
            "node": self.node,
            "healthy": self.healthy,
            "queued": self.queued,
            "written": self.written,
            "dropped": self.dropped,
            "failures": self.failures,
            "checkpoints": self.checkpoints,
            "seconds_since_commit": lag,
        }


def _publish(path: Path, checkpoint: Mapping[str, Any]) -> None:
    """Append `checkpoint` to the external copy (a failure is logged: the database keeps it)."""
    try:
        with path.open("ab") as out:
            out.write(orjson.dumps({"checkpoint": checkpoint}) + b"\n")
    except OSError as exc:
        logger.error("audit checkpoint not published to %s: %s", path, exc)
