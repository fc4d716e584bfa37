"""The applier: the regional log, merged into the store, in order per partition.

For each batch it reads: decode every record strictly (an undecodable or
invalid one goes to the dead-letter topic with its reason, and the applier
carries on); merge each event into its memory's state with the replication
core (duplicates change nothing, I5); update the cache; write the changed
states to the store *while* the listeners record the batch in the history
and fan it out (a subscriber never waits for the store: the event is already
in the log); once both are done, note the applied ``(replica, seq)`` for
read-your-writes; and only then commit the batch's offsets (at most
``MEMSYNC_APPLY_COMMIT_MS`` later, one commit for several batches). If the store
fails, its states leave the cache and the same batch is retried with backoff
— never skipped, never half-applied (listeners deduplicate what they had).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import msgspec
import structlog

from gateway.known_keys import KnownKeys
from gateway.metrics import Metrics
from gateway.service import MemoryService, SeqTracker
from gateway.state_digest import RunningDigest
from gateway.store import MemoryStore
from replication import dvv
from replication.clock import physical_ms
from replication.dvv import Dot, DotContext
from replication.errors import ClockDriftError, MemsyncError
from replication.heartbeat import is_heartbeat
from replication.merge import apply, join
from replication.schema import MemoryEvent, decode_event
from replication.state import MemoryState

__all__ = ["APPLIED_META", "WRITTEN", "Applier", "DeadLetterSink", "Reader", "Record"]

_log = structlog.get_logger(__name__)

APPLIED_META = "applied-seqs"
_MEND_RETRY_S = 1.0  # how long a failed mend of the digest waits before the next
WRITTEN = "written"  # the apply-stage source of write-through batches (Applier.apply_written)
_applied_decoder = msgspec.msgpack.Decoder(DotContext)


class Record(Protocol):
    """What the applier needs of a log record."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def value(self) -> bytes: ...
    @property
    def headers(self) -> tuple[tuple[str, bytes], ...]: ...


class Reader(Protocol):
    """What the applier needs of a log reader."""

    async def read(self, max_records: int, timeout_ms: int) -> Sequence[Record]:
        """The next records (possibly none)."""

    async def commit(self, records: Sequence[Any]) -> None:
        """Commit past these records."""


class DeadLetterSink(Protocol):
    """Where poisoned records go."""

    async def send(self, record: Record, reason: str) -> None:
        """Keep the record and why it was rejected."""


# Each event with its memory's state right after it and right before it.
BatchListener = Callable[
    [list[tuple[MemoryEvent, bytes, MemoryState, MemoryState | None]], DotContext],
    Awaitable[None],
]
HeartbeatListener = Callable[[str, bytes, tuple[tuple[str, bytes], ...]], None]
StateListener = Callable[[list[tuple[MemoryState | None, MemoryState]]], None]


class Applier:
    """Consumes one log and merges it into the region's state.

    A region runs one applier per log (its own and each peer's mirrored log)
    and anti-entropy repairs through one more; they share ``lock``, so one
    memory's read-merge-write never interleaves with another's and listeners
    see batches one at a time, each with the frontier it was applied on.
    """

    def __init__(
        self,
        *,
        name: str,
        reader: Reader,
        store: MemoryStore,
        service: MemoryService,
        tracker: SeqTracker,
        dead_letters: DeadLetterSink,
        metrics: Metrics,
        batch: int = 500,
        poll_ms: int = 100,
        commit_every: float = 0.1,
        lock: asyncio.Lock | None = None,
        digest: RunningDigest | None = None,
        known: KnownKeys | None = None,
    ) -> None:
        self.name = name
        # Keys whose state may be in the store (None: any may be). Only for a
        # store this gateway alone writes: a key it never saw is not there.
        self._known = known
        self.lock = lock or asyncio.Lock()
        self.digest = digest
        self._reader = reader
        self._store = store
        self._service = service
        self._tracker = tracker
        self._dlq = dead_letters
        self._metrics = metrics
        self._batch = batch
        self._poll_ms = poll_ms
        self._commit_every = commit_every
        # Called once per batch with its events (each with its memory's state
        # right after it) and the applied context before the batch (history
        # and fan-out).
        self.batch_listeners: list[BatchListener] = []
        self.heartbeat_listeners: list[HeartbeatListener] = []
        # Told of ``(before, after)`` for memories a state repair changed (no
        # event carries them); ``before`` is None for a memory new here.
        self.state_listeners: list[StateListener] = []
        self.event_counters: list[Callable[[str, int], None]] = []
        self.applied_total = 0
        self.last_applied_at = 0.0
        self._persisted: DotContext | None = None  # the applied context last written
        self._mend_after = 0.0  # when to try settling the digest's doubts again

    async def load_applied(self) -> None:
        """Restore which events were applied before a restart."""
        raw = await self._store.get_meta(APPLIED_META)
        if raw:
            self._tracker.applied = dvv.join(self._tracker.applied, _applied_decoder.decode(raw))

    async def run(self) -> None:
        """Apply forever (until cancelled).

        Offsets are committed after the batches they cover were applied, at
        most ``commit_every`` seconds late (at once when the log goes quiet):
        not one broker round trip per batch. A crash re-reads what was not
        committed, and applying it again changes nothing (I5).
        """
        backoff = 0.05
        uncommitted: dict[tuple[str, int], Any] = {}  # the last record per partition
        last_commit = time.monotonic()
        while True:
            records = await self._reader.read(self._batch, self._poll_ms)
            if records:
                while True:
                    try:
                        await self.apply_batch(records)
                        break
                    except MemsyncError as exc:
                        _log.warning(
                            "applier.retry", applier=self.name, error=exc.message, backoff=backoff
                        )
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, 2.0)
                backoff = 0.05
                for record in records:
                    uncommitted[(record.topic, record.partition)] = record
            now = time.monotonic()
            if uncommitted and (not records or now - last_commit >= self._commit_every):
                # The applied set first: a commit must never cover events a
                # restart would not know were applied (read-your-writes).
                await self.save_applied()
                await self._reader.commit(list(uncommitted.values()))
                uncommitted.clear()
                last_commit = time.monotonic()
                self._stage("commit", last_commit - now)
            elif not records:
                await self.save_applied()  # write-through and repairs, while the log is quiet
            if self.digest is not None and (self.digest.stale or self.digest.has_doubts):
                await self._mend_digest_after_failures()

    async def save_applied(self) -> None:
        """Write which events were applied to the store, if that changed since last time.

        Once per offset commit (and when the log is quiet), not once per
        batch: one store round trip fewer per batch. What a crash loses of
        it, the log gives back (its offsets were not committed either).
        """
        applied = self._tracker.applied
        if applied != self._persisted:
            await self._store.put_meta(APPLIED_META, msgspec.msgpack.encode(applied))
            self._persisted = applied

    async def _mend_digest_after_failures(self) -> None:
        """:meth:`mend_digest` between batches; a store still failing is retried 1 s later."""
        now = time.monotonic()
        if now < self._mend_after:
            return
        try:
            await self.mend_digest()
        except MemsyncError as exc:
            self._mend_after = now + _MEND_RETRY_S
            _log.warning("applier.digest_mend_failed", applier=self.name, error=exc.message)

    def _stage(self, stage: str, seconds: float, *, delivered: bool = True) -> None:
        source = self.name if delivered else WRITTEN
        self._metrics.apply_stage_by(source, stage).observe(seconds)

    async def apply_batch(self, records: Sequence[Any]) -> list[MemoryEvent]:
        """Merge a batch into the store; the events that changed something."""
        async with self.lock:
            return await self._apply_batch(records)

    async def _persist(
        self, changed: dict[str, MemoryState], originals: dict[str, MemoryState]
    ) -> None:
        """Write changed states and count them in the digest; on failure, forget them.

        The cache already holds the merged states; if the store did not take
        them, the retried batch must merge from the store again (from the
        cache it would find nothing to write). A failed write may still have
        landed, so the digest holds those keys in doubt until the store is
        read again (:meth:`RunningDigest.doubt`).
        """
        if not changed:
            return
        try:
            await self._store.put_many(list(changed.values()))
        except BaseException:
            for key in changed:
                self._service.cache.discard(key)
                if self.digest is not None:
                    self.digest.doubt(key, originals.get(key))
            raise
        if self.digest is not None:
            for key, state in changed.items():
                self.digest.replace(originals.get(key), state)

    async def _read_doubted(self, keys: list[str]) -> dict[str, MemoryState | None]:
        """The stored states (``None``: none) of the keys in doubt, the digest settled.

        Read from the store, not the cache: what a failed write left there is
        the truth, whatever a read filled the cache with meanwhile.
        """
        digest = self.digest
        if digest is None or not digest.has_doubts:
            return {}
        doubted = [key for key in keys if digest.in_doubt(key)]
        if not doubted:
            return {}
        stored = await self._store.get_many(doubted)
        found = {key: stored.get(key) for key in doubted}
        for key, state in found.items():
            self._settle(key, state)
        return found

    def _settle(self, key: str, stored: MemoryState | None) -> None:
        """The store holds ``stored`` for ``key``: the digest counts it, the cache has it.

        Into the cache too (joined, never regressing): a read that started
        before the failed write may fill the cache with what the store held
        before it landed, and the next merge would build on that.
        """
        if self.digest is not None and self.digest.settle(key, stored) and stored is not None:
            self._service.remember(stored)

    async def mend_digest(self, page: int = 1000) -> None:
        """Settle every doubt of the digest from the store, or rebuild it when stale.

        Keys in doubt are settled as soon as a batch touches them; this
        settles the others (the run loop calls it after any batch while
        there are doubts, a failing store retried every second), holding the
        apply lock one page at a time. A stale digest (too many doubts to
        hold) is rebuilt by one scan of the store under the apply lock, so
        no change slips between its pages; it is swapped in only whole.
        """
        digest = self.digest
        if digest is None or not (digest.stale or digest.has_doubts):
            return
        if digest.stale:
            await self._rebuild_digest(digest, page)
            return
        doubted = digest.doubts
        for i in range(0, len(doubted), page):
            async with self.lock:
                await self._read_doubted(doubted[i : i + page])

    async def _rebuild_digest(self, digest: RunningDigest, page: int) -> None:
        """Scan the store into a fresh digest under the apply lock and adopt it whole."""
        async with self.lock:
            if not digest.stale:
                return  # another applier (they share the digest) rebuilt it meanwhile
            started = time.perf_counter()
            fresh = RunningDigest(digest.buckets, digest.max_doubts)
            offset: str | None = None
            while True:
                states, offset = await self._store.scan(offset, page)
                fresh.add_all(states)
                if offset is None:
                    break
            digest.adopt(fresh)
        _log.warning(
            "applier.digest_rebuilt",
            applier=self.name,
            memories=digest.count,
            seconds=round(time.perf_counter() - started, 3),
        )

    def _observe(self, events: list[tuple[MemoryEvent, bytes]]) -> None:
        """Feed the batch's timestamps to the clock and the apply-lag histogram."""
        now = time.time() * 1000
        lag = self._metrics.apply_lag.labels(source=self.name)
        for event, _ in events:
            try:
                self._service.clock.observe(event.timestamp)
            except ClockDriftError as exc:
                _log.warning("applier.clock_drift", event_id=event.event_id, error=exc.message)
            lag.observe(max(0.0, now - physical_ms(event.timestamp)) / 1000)

    async def merge_states(self, remote: Sequence[MemoryState]) -> int:
        """Join whole states from a peer (anti-entropy's state repair).

        The join is the same semilattice the events build, so this never
        undoes anything; it only adds what the peer knew. No event carries
        the change, so no cursor moves: the state listeners (live
        subscribers) get the joined states, reads and syncs see them. Returns
        how many memories changed.
        """
        async with self.lock:
            keys = [s.key for s in remote]
            local = await self._store.get_many(keys)
            for stored in local.values():
                self._service.remember(stored)  # as in _apply_events
            if self.digest is not None and self.digest.has_doubts:
                for key in keys:  # read from the store just now: what it holds
                    self._settle(key, local.get(key))
            original = dict(local)
            changed: dict[str, MemoryState] = {}
            for state in remote:
                before = local.get(state.key)
                after = state if before is None else join(before, state)
                if after != before:
                    changed[state.key] = after
                    local[state.key] = after
            if changed:
                for key in changed:
                    self._service.note_known(key)  # before the store has it
                # On failure its keys leave the cache and go in doubt: the
                # write may have landed, and the next merge reads the store.
                await self._persist(changed, original)
                for state in changed.values():
                    self._service.remember(state)
                pairs = [(original.get(k), after) for k, after in changed.items()]
                for listener in self.state_listeners:
                    listener(pairs)
            return len(changed)

    async def _apply_batch(self, records: Sequence[Any]) -> list[MemoryEvent]:
        events: list[tuple[MemoryEvent, bytes]] = []
        beats = []
        for record in records:
            headers = getattr(record, "headers", ())
            if headers and is_heartbeat(headers):
                beats.append(record)
                continue
            try:
                events.append((decode_event(record.value), record.value))
            except MemsyncError as exc:
                self._metrics.dead_letters.labels(reason=exc.code).inc()
                _log.warning(
                    "applier.dead_letter",
                    applier=self.name,
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    reason=exc.message,
                )
                await self._dlq.send(record, exc.message)
        for record in beats:
            for heartbeat_listener in self.heartbeat_listeners:
                heartbeat_listener(self.name, record.value, tuple(record.headers))
        return await self._apply_events(events, delivered=True)

    async def apply_written(self, events: Sequence[tuple[MemoryEvent, bytes]]) -> None:
        """Apply events this gateway wrote, once the log acknowledged them (write-through).

        The same merge, cache, store, history and fan-out as for a batch read
        from the log, without waiting for the log to deliver it back: local
        subscribers and read-your-writes see the write one fetch cycle (or a
        segment roll's hold) sooner. When the log delivers the events, they
        are duplicates here (I5) and change nothing; the log's delivery is
        what is counted, timed and committed.
        """
        async with self.lock:
            await self._apply_events(list(events), delivered=False)

    async def _apply_events(
        self, events: list[tuple[MemoryEvent, bytes]], *, delivered: bool
    ) -> list[MemoryEvent]:
        if not events:
            return []
        started = time.perf_counter()
        keys = list(dict.fromkeys(e.key for e, _ in events))
        states: dict[str, MemoryState] = {}
        missing = []
        doubted = await self._read_doubted(keys)
        for key in keys:
            if key in doubted:
                state = doubted[key]
                if state is not None:
                    states[key] = state
                continue
            cached = self._service.cache.peek(key)
            if cached is not None:
                states[key] = cached
            else:
                missing.append(key)
        if missing and self._known is not None:
            known = self._known
            missing = [key for key in missing if key in known]  # never a false "absent"
        if missing:
            found = await self._store.get_many(missing)
            for state in found.values():
                # Into the cache, joined: a read that started before a failed
                # write may fill it later with what the store held before.
                self._service.remember(state)
            states.update(found)
        originals = dict(states)
        changed: dict[str, MemoryState] = {}
        fresh: list[tuple[MemoryEvent, bytes]] = []
        # Each event with its memory's state right after it, not after the
        # batch: a later event of the batch may have made the memory private
        # or moved it to other channels, and the state goes to subscribers of
        # this event's channels (coalesced and lazy batches, I7). A reference
        # to the immutable state, no copy.
        batch: list[tuple[MemoryEvent, bytes, MemoryState, MemoryState | None]] = []
        for event, raw in events:
            before = states.get(event.key)
            after = apply(before, event)
            batch.append((event, raw, after, before))
            if after is before:
                if delivered:
                    self._metrics.duplicates.inc()
                continue
            states[event.key] = after
            changed[event.key] = after
            fresh.append((event, raw))
        # The store write runs while the batch is recorded and fanned out: a
        # subscriber need not wait for the store (the event is in the log,
        # and the cache answers reads). Read-your-writes waits for both.
        dots = [Dot(e.dot.replica, e.seq) for e, _ in events]
        for state in changed.values():
            self._service.remember(state)
        persist = asyncio.ensure_future(self._persist(changed, originals))
        merged = time.perf_counter()
        self._stage("merge", merged - started, delivered=delivered)
        try:
            if delivered:
                self._observe(events)
            if self.batch_listeners:
                # Every event of the batch, duplicates included: a listener that
                # missed one (a crash before the offsets were committed) gets it
                # again when the batch is read again.
                frontier = self._tracker.applied
                for batch_listener in self.batch_listeners:
                    await batch_listener(batch, frontier)
        except BaseException:
            with contextlib.suppress(Exception):
                await persist
            raise
        published = time.perf_counter()
        self._stage("publish", published - merged, delivered=delivered)
        await persist
        self._stage("store", time.perf_counter() - published, delivered=delivered)
        await self._tracker.note(dots)
        if delivered:
            self._metrics.applied.labels(source=self.name).inc(len(events))
            self.applied_total += len(events)
            self.last_applied_at = time.monotonic()
            for count in self.event_counters:
                count(self.name, len(events))
        else:
            self._metrics.written_through.inc(len(fresh))
        return [e for e, _ in fresh]
