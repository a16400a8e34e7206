"""Routes on the gateway (host key -> current session and container address) and its per-session counters."""
import re
from dataclasses import dataclass

from workspaces.gateway import counters
from workspaces.gateway.config import GatewayConfig, gateway_config, route_line, routes_map_write
from workspaces.gateway.runtime_api import GatewayUnavailable, MasterCLI, RuntimeAPI

TABLE = counters.TABLE
_HOST_KEY_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_SESSION_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ADDRESS_RE = re.compile(r"^\d{1,3}(\.\d{1,3}){3}:\d{1,5}$")
_SESS_HEAD_RE = re.compile(r"^(0x[0-9a-f]+): \[")
_SERVER_ADDR_RE = re.compile(r"^\s+server=\S+ \(id=-?\d+\) addr=(\S+)")

__all__ = ["GatewayUnavailable", "route_set", "route_delete", "route_get", "routes_list", "routes_restore",
           "counters_read"]


@dataclass(frozen=True)
class Route:
    host_key: str
    session_id: str
    address: str | None  # None while the container starts


def _validate(host_key, session_id=None, address=None) -> None:
    if not _HOST_KEY_RE.match(host_key):
        raise ValueError(f"host key {host_key!r} is not a lower-case DNS label")
    if session_id is not None and not _SESSION_RE.match(str(session_id)):
        raise ValueError(f"session id {session_id!r} must match [A-Za-z0-9_-]{{1,64}}")
    if address is not None and not _ADDRESS_RE.match(address):
        raise ValueError(f"address {address!r} must be ip:port")


def _admin(cfg: GatewayConfig | None) -> tuple[GatewayConfig, RuntimeAPI]:
    cfg = cfg or gateway_config()
    return cfg, RuntimeAPI(cfg.admin_socket)


def _check(answer: str, command: str) -> None:
    if answer.strip():
        raise GatewayUnavailable(f"haproxy refused {command!r}: {answer.strip()}")


def route_set(*, host_key, session_id, address, cfg: GatewayConfig | None = None) -> None:
    """Point host_key at session_id's container (address "ip:port", or None: "starting" page); next request on."""
    _validate(host_key, session_id, address)
    cfg, api = _admin(cfg)
    value = route_line(host_key, session_id, address).split(" ", 1)[1]
    answer = api.command(f"set map {cfg.routes_map} {host_key} {value}")
    if "not found" in answer:
        # Two concurrent first sets may both add; lookups take the first entry and set/del act on all of them.
        answer = api.command(f"add map {cfg.routes_map} {host_key} {value}")
    _check(answer, "add map")


def route_get(host_key, *, cfg: GatewayConfig | None = None) -> Route | None:
    _validate(host_key)
    cfg, api = _admin(cfg)
    answer = api.command(f"get map {cfg.routes_map} {host_key}")
    m = re.search(r'found=yes.*?value="([^"]*)"', answer)
    if not m:
        return None
    session_id, _, address = m.group(1).partition("@")
    return Route(host_key, session_id, None if address == "-" else address)


def routes_list(*, cfg: GatewayConfig | None = None) -> list[Route]:
    cfg, api = _admin(cfg)
    routes = []
    for line in api.command(f"show map {cfg.routes_map}").splitlines():
        parts = line.split()
        if len(parts) == 3:
            session_id, _, address = parts[2].partition("@")
            routes.append(Route(parts[1], session_id, None if address == "-" else address))
    return routes


def _streams_to(api: RuntimeAPI, address: str, run=None) -> list[str]:
    """Ids of the streams (HTTP requests in flight, WebSocket tunnels) whose server side is `address`."""
    run = run or api.command
    ids, current = [], None
    for line in run("show sess all").splitlines():
        head = _SESS_HEAD_RE.match(line)
        if head:
            current = head.group(1)
            continue
        m = _SERVER_ADDR_RE.match(line)
        if m and current and m.group(1) == address:
            ids.append(current)
    return ids


def route_delete(*, host_key, cfg: GatewayConfig | None = None) -> int:
    """Remove host_key's route and cut its open streams (WebSockets included); returns how many were cut.

    New requests get the "gone" page at once. Streams are found by their server address in every worker,
    including those still draining after a reload (through the master CLI when it exists).
    """
    _validate(host_key)
    cfg, api = _admin(cfg)
    route = route_get(host_key, cfg=cfg)
    api.command(f"del map {cfg.routes_map} {host_key}")
    if route is None or route.address is None:
        return 0
    cut = 0
    workers = []
    if cfg.master_socket.exists():
        master = MasterCLI(cfg.master_socket)
        try:
            workers = master.workers()
        except GatewayUnavailable:
            workers = []
    if workers:
        for pid in workers:
            master.on_worker(pid, f"del map {cfg.routes_map} {host_key}")
            for sid in _streams_to(api, route.address, run=lambda c, pid=pid: master.on_worker(pid, c)):
                master.on_worker(pid, f"shutdown session {sid}")
                cut += 1
    else:
        for sid in _streams_to(api, route.address):
            api.command(f"shutdown session {sid}")
            cut += 1
    return cut


def routes_restore(routes, *, cfg: GatewayConfig | None = None) -> int:
    """Make the gateway's routes exactly `routes` (iterable of (host_key, session_id, address)), atomically.

    Used after HAProxy (re)starts and by reconcilers: a new map version is filled and committed in one step,
    so no request sees a half-restored map. The map file is rewritten too, for the next start.
    """
    routes = list(routes)
    for host_key, session_id, address in routes:
        _validate(host_key, session_id, address)
    cfg, api = _admin(cfg)
    routes_map_write(cfg, routes)
    answer = api.command(f"prepare map {cfg.routes_map}")
    m = re.search(r"New version created:\s*(\d+)", answer)
    if not m:
        raise GatewayUnavailable(f"prepare map failed: {answer.strip()}")
    version = m.group(1)
    # Chunks keep each payload well under HAProxy's buffer size.
    lines = [route_line(h, s, a) for h, s, a in routes]
    for i in range(0, len(lines), 200):
        _check(api.command(f"add map @{version} {cfg.routes_map}", payload="\n".join(lines[i:i + 200])), "add map")
    _check(api.command(f"commit map @{version} {cfg.routes_map}"), "commit map")
    return len(routes)


def counters_read(*, cfg: GatewayConfig | None = None, tunnels: bool = False) -> dict:
    """Per-session counters over every HAProxy generation: {session_id: {"requests", "bytes_in", "bytes_out",
    "client_bytes", "active", "idle_seconds", "generations": {generation: bytes_out}}}.

    Every live worker is read, old ones still draining after a reload too (a WebSocket they hold is activity), and
    the final tables of stopped workers (`counters.retire`) are added, so the sums never go back across a reload or
    a graceful restart (egress is metered from the gateway's egress log, not from these: `gateway.egress_log`).
    HAProxy 2.6 adds a WebSocket's bytes when it closes (the tunnel is forwarded without waking the stream),
    so while one is open the session reads as active (conn_cur) and its bytes arrive at close or route delete.
    With `tunnels=True` (from `show sess all` of every live worker: costlier, the reclaim tick reads it)
    `client_bytes` also counts the bytes the browser has sent so far on the session's open WebSockets (their request
    channel's `total`, which moves with every frame), so it grows only with what the client sends; and a session
    whose only open streams are WebSockets gets the time since the last byte went through any of them, either way,
    as idle_seconds. Without it, `client_bytes` is `bytes_in`.
    """
    cfg = cfg or gateway_config()
    tables, workers = counters.generations_read(cfg)
    live = {generation for generation, _ in workers}
    merged = {}
    for generation, table in tables.items():
        for session_id, c in table.items():
            m = merged.setdefault(session_id, {"requests": 0, "bytes_in": 0, "bytes_out": 0, "active": 0,
                                               "idle_seconds": None, "generations": {}})
            for name in ("requests", "bytes_in", "bytes_out"):
                m[name] += c[name]
            m["generations"][generation] = c["bytes_out"]
            if generation in live:
                m["active"] += c["active"]
                idle = c["idle_seconds"]
                m["idle_seconds"] = idle if m["idle_seconds"] is None else min(m["idle_seconds"], idle)
    for m in merged.values():
        m["client_bytes"] = m["bytes_in"]
        if m["active"]:
            m["idle_seconds"] = 0.0
    if tunnels:
        sessions_by_address = {r.address: r.session_id for r in routes_list(cfg=cfg) if r.address}
        idle_by_session = {}
        timeout_ms = counters.duration_ms(cfg.timeout_tunnel)
        for _, run in workers:
            streams = _tunnel_streams(run)
            for address, idle in tunnels_idle(run, timeout_ms, streams=streams).items():
                session_id = sessions_by_address.get(address)
                if session_id is not None:
                    idle_by_session[session_id] = min(idle, idle_by_session.get(session_id, idle))
            for stream in streams:
                session_id = sessions_by_address.get(stream.address)
                if stream.tunnel and session_id in merged:
                    merged[session_id]["client_bytes"] += stream.client_bytes
        for session_id, idle in idle_by_session.items():
            if session_id in merged and merged[session_id]["active"]:
                merged[session_id]["idle_seconds"] = idle
    return merged


@dataclass
class _Stream:
    address: str | None = None
    tunnel: bool = False
    client_bytes: int = 0  # the request channel's total: what the client sent on this stream so far
    remaining: list = None


_CHANNEL_RE = re.compile(r"^\s+(req|res)=0x[0-9a-f]+ \(.*\btotal=(\d+)\)")


def _tunnel_streams(run) -> list[_Stream]:
    """The streams of one worker's `show sess all` (`run` sends it a command) with their server address, tunnel
    state, client bytes and read timeouts."""
    streams = []
    for line in run("show sess all").splitlines():
        if _SESS_HEAD_RE.match(line):
            streams.append(_Stream(remaining=[]))
            continue
        if not streams:
            continue
        stream = streams[-1]
        m = _SERVER_ADDR_RE.match(line)
        if m:
            stream.address = m.group(1)
        elif "req.st=MSG_TUNNEL" in line:
            stream.tunnel = True
        elif (channel := _CHANNEL_RE.match(line)) is not None:
            if channel.group(1) == "req":
                stream.client_bytes = int(channel.group(2))
        else:
            rex = re.search(r"\brex=(\S+)", line)
            if rex and rex.group(1) != "<NEVER>":
                stream.remaining.append(_human_ms(rex.group(1)))
    return [s for s in streams if s.address is not None]


def tunnels_idle(run, tunnel_timeout_ms: int, *, streams=None) -> dict:
    """{container address: seconds since the last byte on its liveliest open stream}; an HTTP request in
    flight counts as 0. A tunnel's read timeout is re-armed by every byte read, in either direction (HAProxy
    refreshes both sides of a tunnel together), so idle = timeout - remaining says nothing of who sent it."""
    idle = {}
    for stream in streams if streams is not None else _tunnel_streams(run):
        seconds = 0.0
        if stream.tunnel and stream.remaining:
            seconds = max(0.0, (tunnel_timeout_ms - max(stream.remaining)) / 1000.0)
        idle[stream.address] = min(idle.get(stream.address, seconds), seconds)
    return idle


def _human_ms(text: str) -> int:
    """HAProxy's short durations ("59m56s", "1h", "999ms", "1d2h") in milliseconds."""
    units = {"d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1000, "ms": 1}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)(ms|d|h|m|s)", text))
