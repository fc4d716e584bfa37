"""The dead-letter topic: poisoned records, kept with the reason they were refused."""

from __future__ import annotations

from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

__all__ = ["DEAD_LETTER_TOPIC", "KafkaDeadLetters", "MemoryDeadLetters"]

_log = structlog.get_logger(__name__)
DEAD_LETTER_TOPIC = "memsync.dlq"


class KafkaDeadLetters:
    """Appends refused records to ``memsync.dlq`` with their origin and reason as headers."""

    def __init__(self, bootstrap: str, topic: str = DEAD_LETTER_TOPIC) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._producer: AIOKafkaProducer | None = None
        self.sent = 0

    async def start(self) -> None:
        """Connect lazily: nothing to do until the first dead letter."""

    async def stop(self) -> None:
        """Close the producer."""
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def _create_topic(self) -> None:
        """One partition, created before any metadata request can auto-create it."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap, request_timeout_ms=3000)
        try:
            await admin.start()
            await admin.create_topics([NewTopic(self._topic, 1, 1)])
        finally:
            await admin.close()

    async def send(self, record: Any, reason: str) -> None:
        """Keep the record; never raises (a lost dead letter is logged, not fatal)."""
        headers = [
            ("memsync-reason", reason.encode()[:1024]),
            ("memsync-topic", str(record.topic).encode()),
            ("memsync-partition", str(record.partition).encode()),
            ("memsync-offset", str(record.offset).encode()),
        ]
        try:
            if self._producer is None:
                await self._create_topic()
                producer = AIOKafkaProducer(
                    bootstrap_servers=self._bootstrap, acks="all", request_timeout_ms=3000
                )
                await producer.start()
                self._producer = producer
            await self._producer.send_and_wait(
                self._topic, value=bytes(record.value)[: 900 * 1024], headers=headers, partition=0
            )
            self.sent += 1
        except KafkaError as exc:
            _log.error(
                "dead_letter.lost",
                topic=record.topic,
                offset=record.offset,
                reason=reason,
                error=str(exc),
            )


class MemoryDeadLetters:
    """An in-memory dead-letter sink (tests)."""

    def __init__(self) -> None:
        self.records: list[tuple[Any, str]] = []

    async def send(self, record: Any, reason: str) -> None:
        """Keep the record in memory."""
        self.records.append((record, reason))
