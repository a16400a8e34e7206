"""The gateway's per-session counters across HAProxy generations: every live worker (draining ones too) read through
the master CLI, and the final tables of stopped workers kept in the run dir, so that no reload or restart resets a
count and no reader has to guess whether a lower figure is a reset or a stale read.

A generation is one HAProxy worker process (`<pid>.<start time>`): its counters only grow while it lives, and
nothing writes them but HAProxy (Hearth no longer carries counters over to a new worker with `set table`).
"""
import json
import os
import re
import time
from pathlib import Path

from workspaces.gateway.config import GatewayConfig, gateway_config
from workspaces.gateway.runtime_api import GatewayUnavailable, MasterCLI, RuntimeAPI

TABLE = "hearth_sessions"
_TABLE_ROW_RE = re.compile(r"^0x[0-9a-f]+: key=(\S+) use=(\d+) exp=(\d+)(.*)$")
_GATEWAY_FRONTENDS = ("fe=hearth_gateway ", "fe=hearth_static_compress ")


def _info_generation(info: str) -> str:
    fields = dict(line.split(": ", 1) for line in info.splitlines() if ": " in line)
    return f"{fields['Pid'].strip()}.{fields.get('Start_time_sec', '0').strip()}"


def workers_list(cfg: GatewayConfig) -> list[tuple[str, "callable"]]:
    """[(generation, run)] for every live worker, current first; `run(command)` sends a command to that worker."""
    if cfg.master_socket.exists():
        master = MasterCLI(cfg.master_socket)
        try:
            pids = master.workers()
        except GatewayUnavailable:
            pids = []
        workers = []
        for pid in pids:
            def run(command, pid=pid):
                return master.on_worker(pid, command)
            try:
                workers.append((_info_generation(run("show info")), run))
            except (GatewayUnavailable, KeyError):
                continue  # it exited meanwhile
        if workers:
            return workers
    admin = RuntimeAPI(cfg.admin_socket)
    return [(_info_generation(admin.command("show info")), admin.command)]


def table_parse(text: str, expire_ms: int) -> dict:
    """`show table hearth_sessions` → {session_id: {"requests", "bytes_in", "bytes_out", "active", "idle_seconds"}}."""
    counters = {}
    for line in text.splitlines():
        m = _TABLE_ROW_RE.match(line)
        if not m:
            continue
        key, use, exp, rest = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
        data = dict(kv.split("=", 1) for kv in rest.split() if "=" in kv)
        # Open streams: a WebSocket holds one for its whole life, so an open IDE counts as active.
        active = max(int(data.get("conn_cur", 0)), use)
        counters[key] = {
            "requests": int(data.get("http_req_cnt", 0)),
            "bytes_in": int(data.get("bytes_in_cnt", 0)),
            "bytes_out": int(data.get("bytes_out_cnt", 0)),
            "active": active,
            "idle_seconds": 0.0 if active else max(0.0, (expire_ms - exp) / 1000.0),
        }
    return counters


def _retired_dir(cfg: GatewayConfig) -> Path:
    return cfg.run_dir / "counters"


def retired_read(cfg: GatewayConfig, *, live: set[str]) -> dict:
    """{generation: {session_id: counters}} of workers that are gone, from the final tables `retire` wrote."""
    tables = {}
    directory = _retired_dir(cfg)
    if not directory.is_dir():
        return tables
    for path in directory.glob("*.json"):
        generation = path.stem
        if generation in live:
            continue
        try:
            tables[generation] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being replaced or removed
    return tables


def retire(cfg: GatewayConfig, generation: str, table: dict) -> None:
    """Keep a stopping worker's final table (atomically: written aside, then renamed)."""
    directory = _retired_dir(cfg)
    directory.mkdir(mode=0o700, exist_ok=True)
    tmp = directory / f".{generation}.tmp"
    tmp.write_text(json.dumps({k: {f: v[f] for f in ("requests", "bytes_in", "bytes_out")} for k, v in table.items()}))
    os.replace(tmp, directory / f"{generation}.json")


def retired_prune(cfg: GatewayConfig, *, older_than_seconds: float) -> int:
    """Drop final tables older than the table's own expiry: no live session can still be counted in them."""
    directory, removed = _retired_dir(cfg), 0
    if not directory.is_dir():
        return 0
    cutoff = time.time() - older_than_seconds
    for path in directory.glob("*.json"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed


def generations_read(cfg: GatewayConfig | None = None) -> tuple[dict, list]:
    """({generation: {session_id: counters}} for live and retired workers, [(generation, run)] of the live ones)."""
    cfg = cfg or gateway_config()
    expire_ms = duration_ms(cfg.table_expire)
    workers = workers_list(cfg)
    tables = {generation: table_parse(run(f"show table {TABLE}"), expire_ms) for generation, run in workers}
    tables.update(retired_read(cfg, live=set(tables)))
    return tables, workers


def streams_open(run) -> int:
    """How many client streams (requests in flight, WebSockets) a worker holds."""
    return sum(1 for line in run("show sess").splitlines() if any(fe in line for fe in _GATEWAY_FRONTENDS))


def duration_ms(text: str) -> int:
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", text)
    if not m:
        raise ValueError(f"bad duration {text!r}")
    return int(m.group(1)) * {"ms": 1, "s": 1000, None: 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}[m.group(2)]
