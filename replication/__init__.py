"""The pure replication core of memsync: wire format, clocks, causality, merges.

Nothing in this package does I/O or imports asyncio, aiokafka, aiohttp or
Qdrant (``tests/unit/test_purity.py`` checks); the Kafka log adapter and the
mirror links live in :mod:`replication.log` and :mod:`replication.mirror`
when present and are the only exceptions.
"""

from replication.clock import HybridClock
from replication.dvv import Dot, DotContext, DottedVersion, Order
from replication.errors import MemsyncError
from replication.merge import apply, delta, join
from replication.schema import MemoryBody, MemoryEvent, Ops, Source, decode_event, encode
from replication.state import MemoryState, MemoryView, materialize

__all__ = [
    "Dot",
    "DotContext",
    "DottedVersion",
    "HybridClock",
    "MemoryBody",
    "MemoryEvent",
    "MemoryState",
    "MemoryView",
    "MemsyncError",
    "Ops",
    "Order",
    "Source",
    "apply",
    "decode_event",
    "delta",
    "encode",
    "join",
    "materialize",
]
