"""Anti-entropy: repair, between regions, whatever no log delivered (DESIGN §4).

Each gateway compares itself with every peer every ``interval`` seconds, at
a cost bounded by the answer, in two levels:

1. **Events** (exact, cheap): the peer's applied ``(replica, seq)`` context
   (a version vector plus loose dots — O(replicas) bytes) against ours.
   Events the peer had applied one pass *ago* that we still lack are not in
   flight any more: we fetch them from the peer's event history
   (``POST /v1/replication/missing``) and apply them through the normal
   applier, so the store, history, cursors and subscribers all see them as
   if the log had brought them. Waiting one pass keeps anti-entropy from
   duplicating the links' normal work.
2. **States** (the fallback, Riak-AAE style): when the peer's history no
   longer holds what we lack, or the bucketed state digests differ in two
   consecutive passes while the event contexts agree, we fetch the whole
   states of the memories in the differing buckets
   (``POST /v1/replication/states``) and join them. That repairs anything —
   a broker that came back empty, a mirror whose source offsets are gone,
   segments expired past a link's hold — with reads and syncs seeing the
   result and live subscribers sent the joined states (a ``batch`` with
   ``states`` and no events, moving no cursor: no event carries them).

A peer whose link is visibly draining a backlog (heartbeats arriving, but
older than an interval) is left to its link for that pass ("deferred").

Both are joins of a semilattice: repeating or racing them with the links
changes nothing (I2, I5). Calls go to the peer's gateway URL (through the
fault proxy in ``memsync up``) with a ``replicate``-scoped token this gateway
mints with the cluster secret.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import msgspec
import structlog

from gateway.applier import Applier
from gateway.auth import mint
from gateway.metrics import Metrics
from gateway.service import SeqTracker
from gateway.settings import Peer
from gateway.state_digest import RunningDigest
from replication import dvv
from replication.digest import SetDigest, differing_buckets
from replication.dvv import DotContext
from replication.state import decode_state

__all__ = ["AntiEntropy", "PeerProgress"]

_log = structlog.get_logger(__name__)
_MAX_PAGES = 20  # per peer and pass: the cost bound


class _Context(msgspec.Struct):
    region: str
    applied: DotContext
    history: DotContext
    count: int
    buckets: list[str]


class _Missing(msgspec.Struct):
    events: list[msgspec.Raw]
    complete: bool
    has_more: bool


class _States(msgspec.Struct):
    states: list[str]
    next: str | None


@dataclass(frozen=True)
class _Repaired:
    """A pseudo log record for the applier: one event fetched from a peer."""

    topic: str
    partition: int
    offset: int
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass
class PeerProgress:
    """What anti-entropy knows of one peer (for status and tests)."""

    passes: int = 0
    repaired_events: int = 0
    repaired_states: int = 0
    last_result: str = ""
    previous: DotContext | None = None  # what the peer's history held a pass ago
    previous_diff: frozenset[int] = field(default_factory=frozenset)


class AntiEntropy:
    """Periodic comparison and repair with every peer (see the module docstring)."""

    def __init__(
        self,
        *,
        region: str,
        peers: list[Peer],
        appliers: dict[str, Applier],
        tracker: SeqTracker,
        digest: RunningDigest,
        metrics: Metrics,
        secret: bytes,
        catching_up: Callable[[str], bool] = lambda _peer: False,
        batch: int = 500,
        timeout: float = 5.0,
    ) -> None:
        self._region = region
        self._peers = [p for p in peers if p.url]
        self._appliers = appliers
        self._tracker = tracker
        self._digest = digest
        self._metrics = metrics
        self._secret = secret
        self._catching_up = catching_up
        self._batch = batch
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self.progress = {p.name: PeerProgress() for p in self._peers}

    def _headers(self) -> dict[str, str]:
        token = mint(
            self._secret,
            agent=f"antientropy:{self._region}",
            tenant="memsync.cluster",  # the replicate scope grants nothing on memories
            users=[],
            scope=["replicate"],
            ttl=300,
        )
        return {"Authorization": f"Bearer {token}"}

    async def run(self, interval: float) -> None:
        """Compare with every peer every ``interval`` seconds until cancelled."""
        async with aiohttp.ClientSession(timeout=self._timeout) as http:
            while True:
                await asyncio.sleep(interval)
                for peer in self._peers:
                    try:
                        await self.run_once(http, peer)
                    except Exception:  # noqa: BLE001 - a supervisor: log the bug, keep repairing
                        _log.exception("antientropy.failed", peer=peer.name)
                        self._metrics.antientropy_passes.labels(peer.name, "failed").inc()

    async def run_once(self, http: aiohttp.ClientSession, peer: Peer) -> str:
        """One comparison (and repair) with ``peer``; the result's name."""
        progress = self.progress[peer.name]
        progress.passes += 1
        try:
            result = await self._compare(http, peer, progress)
        except (aiohttp.ClientError, TimeoutError) as exc:
            result = "unreachable"
            _log.debug("antientropy.unreachable", peer=peer.name, error=str(exc))
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            result = "error"
            # Once per run of errors (a wrong secret answers 401 every pass);
            # the passes metric counts every one.
            log = _log.debug if progress.last_result == "error" else _log.warning
            log("antientropy.bad_answer", peer=peer.name, error=str(exc))
        progress.last_result = result
        self._metrics.antientropy_passes.labels(peer.name, result).inc()
        return result

    async def _compare(self, http: aiohttp.ClientSession, peer: Peer, p: PeerProgress) -> str:
        ctx = msgspec.json.decode(
            await self._get(http, f"{peer.url}/v1/replication/context"), type=_Context
        )
        if ctx.region != peer.name:
            raise ValueError(f"{peer.url} is region {ctx.region!r}, not {peer.name!r}")
        result = "in_sync"
        # What its history holds (written after the applier noted the events,
        # so every event in it can be served), not what it noted as applied.
        previous, p.previous = p.previous, ctx.history
        if self._catching_up(peer.name):
            # Its link is draining a backlog (a partition healed): the log
            # will bring what is missing; fetching it here too would double
            # the work and slow convergence. A cut link sends no heartbeats,
            # a broker that lost records sends fresh ones: both are repaired.
            return "deferred"
        if previous is not None and not dvv.is_subset(previous, self._tracker.applied):
            local = self._tracker.applied.vv
            lacking = sum(max(0, n - local.get(r, 0)) for r, n in previous.vv.items())
            self._metrics.antientropy_missing.labels(peer.name).set(lacking)
            complete = await self._fetch_events(http, peer, previous, p)
            result = "repaired" if complete else "incomplete"
            if not complete:
                await self._repair_states(http, peer, p, None)
                return result
        else:
            self._metrics.antientropy_missing.labels(peer.name).set(0)
        if self._digest.stale:
            # Too many failed store writes to know what the store holds: the
            # applier rebuilds the digest from a scan; compare after that.
            p.previous_diff = frozenset()
            return result
        theirs = SetDigest(tuple(bytes.fromhex(b) for b in ctx.buckets), ctx.count)
        mine = self._digest.snapshot()
        diff = (
            frozenset(differing_buckets(mine, theirs))
            if len(ctx.buckets) == len(mine.buckets)
            else frozenset()
        )
        stable = diff & p.previous_diff
        p.previous_diff = diff
        if stable and ctx.applied == self._tracker.applied:
            # The same events applied, yet different states, twice in a row:
            # something no event explains (a lost or healed gap). Repair.
            await self._repair_states(http, peer, p, sorted(stable))
            result = "repaired"
        return result

    async def _fetch_events(
        self, http: aiohttp.ClientSession, peer: Peer, upto: DotContext, p: PeerProgress
    ) -> bool:
        applier = self._appliers[peer.name]
        complete = True
        for _ in range(_MAX_PAGES):
            body = msgspec.json.encode(
                {"since": self._tracker.applied, "upto": upto, "limit": self._batch}
            )
            found = msgspec.json.decode(
                await self._post(http, f"{peer.url}/v1/replication/missing", body), type=_Missing
            )
            complete = complete and found.complete
            if found.events:
                records = [
                    _Repaired(f"antientropy:{peer.name}", 0, i, bytes(raw))
                    for i, raw in enumerate(found.events)
                ]
                await applier.apply_batch(records)
                p.repaired_events += len(records)
                self._metrics.antientropy_repaired.labels(peer.name).inc(len(records))
                _log.info("antientropy.repaired_events", peer=peer.name, events=len(records))
            if not found.has_more:
                break
        return complete

    async def _repair_states(
        self, http: aiohttp.ClientSession, peer: Peer, p: PeerProgress, buckets: list[int] | None
    ) -> None:
        of = self._digest.buckets
        wanted = list(range(of)) if buckets is None else buckets
        applier = self._appliers[peer.name]
        offset: str | None = None
        for _ in range(_MAX_PAGES):
            body = msgspec.json.encode(
                {"buckets": wanted, "of": of, "offset": offset, "limit": self._batch}
            )
            page = msgspec.json.decode(
                await self._post(http, f"{peer.url}/v1/replication/states", body), type=_States
            )
            states = [decode_state(base64.b64decode(s)) for s in page.states]
            changed = await applier.merge_states(states)
            if changed:
                p.repaired_states += changed
                self._metrics.antientropy_repaired_states.labels(peer.name).inc(changed)
                _log.info("antientropy.repaired_states", peer=peer.name, memories=changed)
            offset = page.next
            if offset is None:
                break

    async def _get(self, http: aiohttp.ClientSession, url: str) -> bytes:
        async with http.get(url, headers=self._headers()) as resp:
            return await _ok(resp)

    async def _post(self, http: aiohttp.ClientSession, url: str, body: bytes) -> bytes:
        headers = {**self._headers(), "Content-Type": "application/json"}
        async with http.post(url, data=body, headers=headers) as resp:
            return await _ok(resp)


async def _ok(resp: aiohttp.ClientResponse) -> bytes:
    data = await resp.read()
    if resp.status != 200:
        raise ValueError(f"{resp.url} answered {resp.status}: {data[:200]!r}")
    return data
