"""The async Python client of memsync.

- :class:`MemorySync` — the HTTP API (create/get/update/delete/list/search,
  read-your-writes session tokens, ``If-Match`` versions, typed errors,
  retries that honour ``Retry-After``, region fallback), cache warming from
  ``/v1/sync`` and live subscriptions;
- :class:`Subscription` — one self-healing WebSocket subscription (resume by
  cursor with backoff across short-lived sessions; a full, reconciled resync
  when the cursor's history is gone or the gateway cannot decode it, memories
  gone meanwhile reported with ``Change.gone``, as are those the server says
  left its channels);
- :class:`LocalCache` — a bounded replica of memory states, merged with the
  gateways' own ``replication.merge`` functions, that records which
  subscriptions hold each memory;
- the errors of :mod:`gateway.client.errors`.
"""

from gateway.client.cache import DEFAULT_MAX_ENTRIES, LocalCache
from gateway.client.errors import (
    AuthenticationError,
    BadRequestError,
    ConflictError,
    MemsyncClientError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    PreconditionFailedError,
    RateLimitedError,
    ResyncRequiredError,
    ServerError,
    SubscriptionError,
    TransportError,
    UnavailableError,
    UnsupportedMediaTypeError,
    ValidationError,
)
from gateway.client.sdk import MemorySync
from gateway.client.stream import Callback, Mode, StreamOptions, Subscription
from gateway.client.transport import RetryPolicy
from gateway.client.wire import Change, ListPage, SearchHit, SyncPage, WriteResult

__all__ = [
    "DEFAULT_MAX_ENTRIES",
    "AuthenticationError",
    "BadRequestError",
    "Callback",
    "Change",
    "ConflictError",
    "ListPage",
    "LocalCache",
    "MemorySync",
    "MemsyncClientError",
    "Mode",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PreconditionFailedError",
    "RateLimitedError",
    "ResyncRequiredError",
    "RetryPolicy",
    "SearchHit",
    "ServerError",
    "StreamOptions",
    "Subscription",
    "SubscriptionError",
    "SyncPage",
    "TransportError",
    "UnavailableError",
    "UnsupportedMediaTypeError",
    "ValidationError",
    "WriteResult",
]
