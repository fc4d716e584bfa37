"""The live admin dashboard: ``GET /dashboard`` (a page) and ``GET /v1/dashboard`` (its data).

The page is static and holds no data: it asks for an admin token, keeps it
in the tab's ``sessionStorage`` and polls ``/v1/dashboard`` once a second
with it. The data is what an operator looks at first: the region's mode,
every incoming link's lag and state, counts, the latest events applied here
and the memories whose latest event left concurrent versions (conflicts: an
LWW memory's losers, a surfaced memory's siblings).

:class:`DashboardFeed` is an applier batch listener. It keeps the latest
:data:`RECENT` events once each (the log's delivery of a written-through
event is a duplicate) in a ring, a few small fields per event, never the
memory's content. The data answer shows only the admin token's tenant.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.api import _claims, json_response
from gateway.keys import MODE, RUNTIME
from replication.dvv import DotContext
from replication.schema import MemoryEvent
from replication.state import MemoryState

if TYPE_CHECKING:
    from gateway.runtime import Runtime

__all__ = ["RECENT", "DashboardFeed", "routes"]

RECENT = 512  # events kept, over every tenant (each answer shows one tenant's)
SHOWN = 50  # events and conflicts per answer
# Dots remembered per event kept, to skip the log's delivery of an event
# written through earlier: 8 × 512 covers ~4 s of log lag at 1,000 events/s
# (past that an event is counted twice: the counts are a view, not a ledger).
_SEEN_PER_KEPT = 8


class DashboardFeed:
    """The latest events applied here, once each, bounded (an applier batch listener)."""

    def __init__(self, region: str, size: int = RECENT) -> None:
        self.region = region
        # (applied at ms, type, tenant, user, id, origin region, concurrent versions)
        self._recent: collections.deque[tuple[int, str, str, str, str, str, int]] = (
            collections.deque(maxlen=size)
        )
        self._seen: set[tuple[str, int]] = set()
        self._seen_order: collections.deque[tuple[str, int]] = collections.deque()
        self._size = size
        self.events = 0  # distinct events seen since start
        self.conflicts = 0  # of them, those that left concurrent versions

    async def on_batch(
        self,
        batch: Sequence[tuple[MemoryEvent, bytes, MemoryState, MemoryState | None]],
        _frontier: DotContext,
    ) -> None:
        """Note a batch's events (duplicates skipped); never fails the batch."""
        now = int(time.time() * 1000)
        seen, order = self._seen, self._seen_order
        for event, _raw, state, _before in batch:
            dot = (event.dot.replica, event.seq)  # seq: per replica (a dot's counter is per memory)
            if dot in seen:
                continue
            seen.add(dot)
            order.append(dot)
            if len(order) > _SEEN_PER_KEPT * self._size:
                seen.discard(order.popleft())
            versions = len(state.versions)
            self.events += 1
            if versions > 1:
                self.conflicts += 1
            memory = event.memory
            self._recent.append(
                (
                    now,
                    event.event_type,
                    memory.tenant_id,
                    memory.user_id,
                    memory.id,
                    event.source.region,
                    versions,
                )
            )

    def recent(
        self, tenant: str, limit: int = SHOWN, may_see: Callable[[str], bool] | None = None
    ) -> list[dict[str, Any]]:
        """The tenant's latest events, newest first (of the users ``may_see`` allows)."""
        out: list[dict[str, Any]] = []
        for at, kind, ten, user, mid, region, versions in reversed(self._recent):
            if ten != tenant or (may_see is not None and not may_see(user)):
                continue
            out.append(
                {
                    "at_ms": at,
                    "type": kind,
                    "id": mid,
                    "user_id": user,
                    "region": region,
                    "local": region == self.region,
                    "versions": versions,
                }
            )
            if len(out) >= limit:
                break
        return out


async def dashboard_data(request: web.Request) -> web.Response:
    """``GET /v1/dashboard``: the page's data (admin scope; the token's tenant and users only)."""
    claims = _claims(request)
    claims.require("admin")
    runtime: Runtime = request.app[RUNTIME]
    modes = request.app[MODE]
    feed = runtime.dashboard
    status = await runtime.status()
    recent = feed.recent(claims.tenant, SHOWN, claims.may_act_for)  # its users only (I7)
    latest: dict[str, dict[str, Any]] = {}
    for entry in recent:  # newest first: the latest event of each memory
        latest.setdefault(entry["id"], entry)
    return json_response(
        {
            "region": runtime.settings.region,
            "at_ms": int(time.time() * 1000),
            "mode": modes.current(),
            "modes": modes.active(),
            "links": runtime.replication.view(),
            "totals": {**status, "events_seen": feed.events, "conflicts_seen": feed.conflicts},
            "recent": recent,
            "conflicts": [e for e in latest.values() if e["versions"] > 1],
        }
    )


async def dashboard_page(_request: web.Request) -> web.Response:
    """``GET /dashboard``: the page (static; it fetches its data with the token it is given)."""
    return web.Response(
        text=PAGE,
        content_type="text/html",
        headers={
            "Content-Security-Policy": (
                f"default-src 'none'; script-src 'sha256-{_SCRIPT_HASH}'; "
                "style-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; "
                "form-action 'none'; frame-ancestors 'none'"
            ),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
        },
    )


def routes() -> list[web.RouteDef]:
    """The dashboard's routes."""
    return [web.get("/dashboard", dashboard_page), web.get("/v1/dashboard", dashboard_data)]


_SCRIPT = """
const $ = (id) => document.getElementById(id);
const KEY = "memsync-dashboard-token";
let timer = null, last = null;
function cell(row, text, cls) {
  const td = row.insertCell(); td.textContent = text == null ? "—" : String(text);
  if (cls) td.className = cls; return td;
}
function table(id, rows, columns) {
  const body = $(id); body.replaceChildren();
  if (!rows.length) { const r = body.insertRow(); const td = cell(r, "none");
    td.colSpan = columns.length; td.className = "muted"; return; }
  for (const item of rows) { const r = body.insertRow();
    for (const [get, cls] of columns) cell(r, get(item), cls ? cls(item) : null); }
}
const ago = (ms, now) => ((now - ms) / 1000).toFixed(1) + " s ago";
function render(d) {
  $("region").textContent = d.region;
  const mode = $("mode"); mode.textContent = d.mode;
  mode.className = "badge " + (d.mode === "normal" ? "ok" : "warn");
  const t = d.totals, rate = last ? (t.events_seen - last.totals.events_seen) /
      Math.max(0.001, (d.at_ms - last.at_ms) / 1000) : null;
  const facts = [["events/s here", rate == null ? "…" : rate.toFixed(1)],
    ["events applied (log)", t.applied_events], ["subscriptions", t.subscriptions],
    ["outbox pending", t.outbox_pending], ["events seen", t.events_seen],
    ["conflicts seen", t.conflicts_seen], ["replica", t.replica]];
  const dl = $("totals"); dl.replaceChildren();
  for (const [k, v] of facts) { const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = String(v); dl.append(dt, dd); }
  table("links", d.links, [[l => l.source], [l => l.target], [l => l.lag_ms],
    [l => l.lag_events], [l => l.state, l => l.state === "replicating" ? "ok" : "warn"]]);
  table("recent", d.recent, [[e => ago(e.at_ms, d.at_ms)], [e => e.type], [e => e.id],
    [e => e.user_id], [e => e.region + (e.local ? "" : " (remote)")],
    [e => e.versions > 1 ? e.versions + " concurrent" : "", () => "warn"]]);
  table("conflicts", d.conflicts, [[e => e.id], [e => e.user_id],
    [e => e.versions + " versions"], [e => ago(e.at_ms, d.at_ms)]]);
  last = d;
}
async function poll() {
  const token = sessionStorage.getItem(KEY);
  if (!token) { $("status").textContent = "paste an admin token to start"; return; }
  try {
    const r = await fetch("/v1/dashboard", {headers: {Authorization: "Bearer " + token},
                                            cache: "no-store"});
    const body = await r.json();
    if (!r.ok) {
      $("status").textContent = r.status + " " + (body.error ? body.error.message : "") +
        (r.status === 401 || r.status === 403 ?
          " (make one with: memsync token --tenant T --user '*' --admin)" : "");
      return;
    }
    render(body);
    $("status").textContent = "live, updated " + new Date(body.at_ms).toLocaleTimeString();
  } catch (err) { $("status").textContent = "gateway unreachable: " + err; }
}
$("form").addEventListener("submit", (ev) => { ev.preventDefault();
  sessionStorage.setItem(KEY, $("token").value.trim()); $("token").value = ""; last = null;
  poll(); });
$("forget").addEventListener("click", () => { sessionStorage.removeItem(KEY); last = null;
  poll(); });
poll(); timer = setInterval(poll, 1000);
"""

_SCRIPT_HASH = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()

PAGE = (
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>memsync dashboard</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 1.5rem; color: #1b1f24; }
h1 { font-size: 1.3rem; } h2 { font-size: 1.05rem; margin-top: 1.5rem; }
table { border-collapse: collapse; min-width: 40rem; }
th, td { text-align: left; padding: .25rem .75rem .25rem 0; border-bottom: 1px solid #e3e6ea; }
th { font-weight: 600; color: #57606a; }
dl { display: grid; grid-template-columns: max-content auto; gap: .2rem 1rem; }
dt { color: #57606a; } dd { margin: 0; font-variant-numeric: tabular-nums; }
.badge { padding: .1rem .5rem; border-radius: .6rem; font-size: .85rem; }
.ok { color: #116329; } .badge.ok { background: #dafbe1; }
.warn { color: #9a6700; } .badge.warn { background: #fff8c5; }
.muted { color: #8c959f; } #status { color: #57606a; margin-left: 1rem; }
</style></head>
<body>
<h1>memsync · <span id="region">…</span> <span id="mode" class="badge">…</span></h1>
<form id="form"><input id="token" type="password" size="50" autocomplete="off"
  placeholder="admin token (kept in this tab only)">
<button>use</button> <button type="button" id="forget">forget token</button>
<span id="status"></span></form>
<h2>Region</h2><dl id="totals"></dl>
<h2>Incoming links</h2>
<table><thead><tr><th>source</th><th>target</th><th>lag ms</th><th>lag events</th>
<th>state</th></tr></thead><tbody id="links"></tbody></table>
<h2>Conflicts (latest event left concurrent versions)</h2>
<table><thead><tr><th>memory</th><th>user</th><th>versions</th><th>when</th></tr></thead>
<tbody id="conflicts"></tbody></table>
<h2>Latest events applied here</h2>
<table><thead><tr><th>when</th><th>type</th><th>memory</th><th>user</th><th>from</th>
<th></th></tr></thead><tbody id="recent"></tbody></table>
<script>"""
    + _SCRIPT
    + """</script>
</body></html>
"""
)
