"""HTTP plumbing for the client: endpoints with region fallback, one request with retries.

Retry policy (tenacity), by what a repeat could do:

- ``always`` — reads (GET, list, search, sync): every retriable error
  (429, 503, other 5xx, broken or timed-out connections) is retried;
- ``rejected`` — conditional writes (PATCH/DELETE with ``If-Match``, create
  with an explicit id): retried only when the gateway *rejected* the request
  (429, 503) or it never left this process; never after an ambiguous
  failure, which might have applied it (an increment would count twice);
- ``never`` — blind creates (no id): only a request that never left this
  process (connection refused) is sent again.

``Retry-After`` is honoured (capped); otherwise the wait is exponential with
jitter. Transport failures and region-level 503s move on to the next region
of ``region_fallbacks`` (503s from the second attempt on: a first one is often
a region catching up on the session's writes); session tokens and cursors are
valid in every region.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import aiohttp
import msgspec
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from gateway.client.errors import (
    MemsyncClientError,
    RateLimitedError,
    TransportError,
    UnavailableError,
    error_for_status,
)

__all__ = ["Endpoints", "Response", "RetryMode", "RetryPolicy", "Transport", "parse_retry_after"]

_log = structlog.get_logger(__name__)

RetryMode = Literal["always", "rejected", "never"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard one call tries: attempts, total time, and the waits between tries (seconds)."""

    attempts: int = 5
    total: float = 20.0
    initial_wait: float = 0.05
    max_wait: float = 5.0
    jitter: float = 0.2


class _ErrorBody(msgspec.Struct, frozen=True):
    code: str = ""
    message: str = ""


class _ErrorAnswer(msgspec.Struct, frozen=True):
    error: _ErrorBody = msgspec.field(default_factory=_ErrorBody)


_error_decoder = msgspec.json.Decoder(_ErrorAnswer)


class Endpoints:
    """The region URLs in order of preference; ``rotate`` moves to the next one."""

    def __init__(self, base_url: str, fallbacks: Sequence[str] = ()) -> None:
        urls = [u.rstrip("/") for u in (base_url, *fallbacks) if u]
        if not urls:
            raise ValueError("base_url must not be empty")
        self.urls: tuple[str, ...] = tuple(dict.fromkeys(urls))
        self._i = 0

    @property
    def current(self) -> str:
        """The region URL requests go to now."""
        return self.urls[self._i]

    def rotate(self) -> None:
        """Fail over to the next region (no-op with one region)."""
        if len(self.urls) > 1:
            self._i = (self._i + 1) % len(self.urls)
            _log.warning("memsync_client_region_failover", url=self.current)


@dataclass(frozen=True, slots=True)
class Response:
    """A successful HTTP answer."""

    status: int
    headers: Mapping[str, str]
    body: bytes


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds form only)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(0.0, seconds)


def _error(status: int, headers: Mapping[str, str], body: bytes) -> MemsyncClientError:
    try:
        err = _error_decoder.decode(body).error
        code, message = err.code, err.message
    except msgspec.DecodeError:
        code, message = "", body[:200].decode("utf-8", "replace")
    return error_for_status(status, code, message, parse_retry_after(headers.get("Retry-After")))


def _retriable(exc: BaseException, mode: RetryMode) -> bool:
    if isinstance(exc, TransportError):
        return mode == "always" or not exc.sent
    if not isinstance(exc, MemsyncClientError) or not exc.retriable:
        return False
    if mode == "always":
        return True
    return mode == "rejected" and isinstance(exc, RateLimitedError | UnavailableError)


class Transport:
    """Sends one API request, with authentication, retries and region failover."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        endpoints: Endpoints,
        token: str,
        policy: RetryPolicy,
        request_timeout: float = 30.0,
    ) -> None:
        self.http = http
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self.endpoints = endpoints
        self.policy = policy
        self._auth = {"Authorization": f"Bearer {token}"}
        self._backoff = wait_exponential_jitter(
            multiplier=policy.initial_wait, max=policy.max_wait, jitter=policy.jitter
        )

    @property
    def auth_headers(self) -> dict[str, str]:
        """The ``Authorization`` header."""
        return dict(self._auth)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = exc.retry_after if isinstance(exc, MemsyncClientError) else None
        if retry_after is not None:
            return min(retry_after, self.policy.max_wait)
        return float(self._backoff(state))

    @staticmethod
    def _before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        _log.info(
            "memsync_client_retry",
            attempt=state.attempt_number,
            error=type(exc).__name__,
            status=getattr(exc, "status", None),
            code=getattr(exc, "code", None),
            wait_s=round(state.upcoming_sleep, 3),
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        retry: RetryMode,
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """Send a request; the answer when 2xx, else the typed error (after retries)."""
        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda e: _retriable(e, retry)),
            wait=self._wait,
            stop=stop_after_attempt(self.policy.attempts) | stop_after_delay(self.policy.total),
            before_sleep=self._before_sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                n = attempt.retry_state.attempt_number
                return await self._once(method, path, params, body, headers, n)
        raise AssertionError("tenacity ended without an outcome")  # pragma: no cover

    async def _once(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        body: bytes | None,
        headers: Mapping[str, str] | None,
        attempt: int,
    ) -> Response:
        h = {**self._auth, **(headers or {})}
        if body is not None:
            h["Content-Type"] = "application/json"
        url = self.endpoints.current + path
        try:
            async with self.http.request(
                method, url, params=params, data=body, headers=h, timeout=self._timeout
            ) as resp:
                data = await resp.read()
                status = resp.status
                answer_headers: Mapping[str, str] = resp.headers
        except aiohttp.ClientConnectorError as exc:
            self.endpoints.rotate()
            raise TransportError(f"cannot connect to {url}: {exc}", sent=False) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.endpoints.rotate()
            raise TransportError(f"{method} {url} failed: {exc!r}", sent=True) from exc
        if status >= 400:
            err = _error(status, answer_headers, data)
            if isinstance(err, UnavailableError) and attempt >= 2:
                # A first 503 is often a region catching up on this session's
                # writes; a repeated one means the region is degraded.
                self.endpoints.rotate()
            raise err
        return Response(status, answer_headers, data)
