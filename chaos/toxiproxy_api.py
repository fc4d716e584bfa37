"""The Toxiproxy HTTP API (2.x, as in ``api.go``) over a :class:`ProxyCollection`.

Routes, methods, status codes and JSON shapes are the real server's, so its
clients (``toxiproxy-python``, the Go client, ``toxiproxy-cli``) drive this one
unchanged. Errors are ``{"error": message, "status": code}``. Like the real
server, requests whose User-Agent starts with ``Mozilla/`` get 403 (no driving
it from a web page).
"""

from __future__ import annotations

import json
import random
import socket
from collections.abc import AsyncIterator
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from chaos.collection import PopulateError, ProxyCollection
from chaos.errors import ApiError, bad_body, missing_field
from chaos.proxy import DEFAULT_LISTEN, ProxyConfig
from chaos.settings import Limits
from chaos.toxics import parse_toxic

__all__ = ["VERSION", "ToxiproxyServer", "create_app"]

VERSION = "2.12.0+memsync"
"""The Toxiproxy release whose API this implements, plus our build tag."""

_log = structlog.get_logger(__name__)
_COLLECTION = web.AppKey("collection", ProxyCollection)


def create_app(collection: ProxyCollection, *, limits: Limits | None = None) -> web.Application:
    """The aiohttp app; its cleanup stops every proxy of ``collection``."""
    app = web.Application(
        middlewares=[_errors, _no_browsers],
        client_max_size=(limits or Limits()).max_body_bytes,
    )
    app[_COLLECTION] = collection
    app.cleanup_ctx.append(_close_proxies)
    app.router.add_post("/reset", _reset)
    app.router.add_get("/proxies", _proxy_index)
    app.router.add_post("/proxies", _proxy_create)
    app.router.add_post("/populate", _populate)
    app.router.add_get("/proxies/{proxy}", _proxy_show)
    app.router.add_post("/proxies/{proxy}", _proxy_update)
    app.router.add_patch("/proxies/{proxy}", _proxy_update)
    app.router.add_delete("/proxies/{proxy}", _proxy_delete)
    app.router.add_get("/proxies/{proxy}/toxics", _toxic_index)
    app.router.add_post("/proxies/{proxy}/toxics", _toxic_create)
    app.router.add_get("/proxies/{proxy}/toxics/{toxic}", _toxic_show)
    app.router.add_post("/proxies/{proxy}/toxics/{toxic}", _toxic_update)
    app.router.add_patch("/proxies/{proxy}/toxics/{toxic}", _toxic_update)
    app.router.add_delete("/proxies/{proxy}/toxics/{toxic}", _toxic_delete)
    app.router.add_get("/version", _version)
    return app


class ToxiproxyServer:
    """A Toxiproxy-compatible server in this process: ``await start()`` … ``await stop()``.

    ``port=0`` picks a free port; ``.port``/``.url`` tell which once started.
    ``.collection`` is the same state the HTTP API drives, for in-process use.
    ``seed`` makes toxicity rolls, jitter and slice sizes reproducible.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        limits: Limits | None = None,
        seed: int | None = None,
    ) -> None:
        self.host = host
        self._port = port
        self._limits = limits or Limits()
        # Not security-relevant randomness; seedable so a fault run can be replayed.
        self.collection = ProxyCollection(limits=self._limits, rng=random.Random(seed))  # noqa: S311
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}"

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("ToxiproxyServer already started")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.create_server((self.host, self._port), family=family)
        runner = web.AppRunner(
            create_app(self.collection, limits=self._limits),
            access_log=None,
            shutdown_timeout=self._limits.close_timeout,
        )
        try:
            await runner.setup()
            await web.SockSite(runner, sock).start()
        except BaseException:
            await runner.cleanup()
            sock.close()
            raise
        self._runner = runner
        self._port = int(sock.getsockname()[1])
        _log.info("toxiproxy.started", url=self.url, version=VERSION)

    async def stop(self) -> None:
        """Stop the API, every proxy listener and every live connection."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            _log.info("toxiproxy.stopped", url=self.url)

    async def __aenter__(self) -> ToxiproxyServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


# -- middleware -----------------------------------------------------------------


def _error(message: str, status: int, **extra: Any) -> web.Response:
    return web.json_response({"error": message, "status": status, **extra}, status=status)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return _error(exc.message, exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        response = _error(exc.reason, exc.status)
        response.headers.update(allow or {})
        return response
    except Exception:  # noqa: BLE001 - the outermost middleware: a bug becomes a JSON 500
        _log.exception("toxiproxy.unhandled", method=request.method, path=request.path)
        return _error("internal server error", 500)


@web.middleware
async def _no_browsers(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.headers.get("User-Agent", "").startswith("Mozilla/"):
        return web.Response(status=403, text="User agent not allowed")
    return await handler(request)


async def _close_proxies(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[_COLLECTION].close()


# -- request bodies -------------------------------------------------------------


async def _body(request: web.Request) -> object:
    raw = await request.read()
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise bad_body(str(exc) if raw else "EOF") from exc


def _field(body: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = body.get(key, default)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise bad_body(f"{key} must be a {'boolean' if kind is bool else 'string'}")
    return value


def _proxy_config(body: object, where: str = "") -> ProxyConfig:
    if not isinstance(body, dict):
        raise bad_body("expected a JSON object")
    name = _field(body, "name", str, "")
    upstream = _field(body, "upstream", str, "")
    if not name:
        raise missing_field(f"name{where}")
    if not upstream:
        raise missing_field(f"upstream{where}")
    listen = _field(body, "listen", str, "") or DEFAULT_LISTEN
    enabled = _field(body, "enabled", bool, True)
    return ProxyConfig(name=name, upstream=upstream, listen=listen, enabled=enabled)


# -- handlers -------------------------------------------------------------------


async def _proxy_index(request: web.Request) -> web.Response:
    proxies = request.app[_COLLECTION].proxies()
    return web.json_response({name: proxy.to_json() for name, proxy in proxies.items()})


async def _proxy_create(request: web.Request) -> web.Response:
    config = _proxy_config(await _body(request))
    proxy = await request.app[_COLLECTION].create(config)
    return web.json_response(proxy.to_json(), status=201)


async def _populate(request: web.Request) -> web.Response:
    body = await _body(request)
    if not isinstance(body, list):
        raise bad_body("expected a JSON array of proxies")
    configs = [_proxy_config(item, f" at proxy {i}") for i, item in enumerate(body, start=1)]
    try:
        proxies = await request.app[_COLLECTION].populate(configs)
    except PopulateError as exc:
        done = [proxy.to_json() for proxy in exc.done]
        return _error(exc.error.message, exc.error.status, proxies=done)
    return web.json_response({"proxies": [proxy.to_json() for proxy in proxies]}, status=201)


async def _proxy_show(request: web.Request) -> web.Response:
    proxy = request.app[_COLLECTION].get(request.match_info["proxy"])
    return web.json_response(proxy.to_json())


async def _proxy_update(request: web.Request) -> web.Response:
    collection = request.app[_COLLECTION]
    name = request.match_info["proxy"]
    collection.get(name)  # 404 before looking at the body, as the real server
    body = await _body(request)
    if not isinstance(body, dict):
        raise bad_body("expected a JSON object")
    proxy = await collection.update(
        name,
        listen=_field(body, "listen", str, None) if "listen" in body else None,
        upstream=_field(body, "upstream", str, None) if "upstream" in body else None,
        enabled=_field(body, "enabled", bool, None) if "enabled" in body else None,
    )
    return web.json_response(proxy.to_json())


async def _proxy_delete(request: web.Request) -> web.Response:
    await request.app[_COLLECTION].remove(request.match_info["proxy"])
    return web.Response(status=204)


async def _toxic_index(request: web.Request) -> web.Response:
    proxy = request.app[_COLLECTION].get(request.match_info["proxy"])
    return web.json_response([spec.to_json() for spec in proxy.toxics])


async def _toxic_create(request: web.Request) -> web.Response:
    proxy = request.app[_COLLECTION].get(request.match_info["proxy"])
    spec = proxy.add_toxic(parse_toxic(await _body(request)))
    return web.json_response(spec.to_json())


async def _toxic_show(request: web.Request) -> web.Response:
    proxy = request.app[_COLLECTION].get(request.match_info["proxy"])
    return web.json_response(proxy.get_toxic(request.match_info["toxic"]).to_json())


async def _toxic_update(request: web.Request) -> web.Response:
    proxy = request.app[_COLLECTION].get(request.match_info["proxy"])
    name = request.match_info["toxic"]
    proxy.get_toxic(name)  # 404 before looking at the body
    spec = proxy.update_toxic(name, await _body(request))
    return web.json_response(spec.to_json())


async def _toxic_delete(request: web.Request) -> web.Response:
    proxy = request.app[_COLLECTION].get(request.match_info["proxy"])
    proxy.remove_toxic(request.match_info["toxic"])
    return web.Response(status=204)


async def _reset(request: web.Request) -> web.Response:
    await request.app[_COLLECTION].reset()
    return web.Response(status=204)


async def _version(request: web.Request) -> web.Response:
    return web.json_response({"version": VERSION})
