"""Running HAProxy for Hearth: render, start (master-worker), hitless reload, key rotation, stop."""
import ctypes
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable

from django.conf import settings
from django.utils.module_loading import import_string

from workspaces.gateway import counters, egress_log, tokens
from workspaces.gateway.config import GatewayConfig, config_check, config_render, gateway_config, routes_map_write
from workspaces.gateway.counters import TABLE
from workspaces.gateway.routes import routes_list, routes_restore
from workspaces.gateway.runtime_api import GatewayUnavailable, MasterCLI, RuntimeAPI
from workspaces.gateway.tracing import FirstRequestListener

log = logging.getLogger(__name__)
RoutesSource = Callable[[], Iterable[tuple[str, str, str | None]]]


def routes_source_from_settings() -> RoutesSource | None:
    """The callable that lists every live route from the database (GATEWAY_ROUTES_SOURCE, a dotted path)."""
    path = getattr(settings, "GATEWAY_ROUTES_SOURCE", "")
    return import_string(path) if path else None


def _wait(predicate, *, timeout: float, what: str, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = predicate()
        except GatewayUnavailable:
            result = None
        if result:
            return result
        time.sleep(interval)
    raise GatewayUnavailable(f"timed out waiting for {what}")


def _master_state(master: MasterCLI) -> tuple[int, list[int]]:
    """(number of reloads, worker pids) from the master CLI."""
    reloads, workers = 0, []
    for line in master.command("show proc").splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].isdigit():
            if parts[1] == "master":
                reloads = int(parts[2])
            elif parts[1] == "worker":
                workers.append(int(parts[0]))
    return reloads, workers


def gateway_reload(cfg: GatewayConfig | None = None, *, routes_source: RoutesSource | None = None,
                   timeout: float = 15.0) -> None:
    """Re-render (new keys, settings) and reload hitlessly: the new worker takes new connections, the old one
    finishes its streams (WebSockets included, up to hard-stop-after).

    The per-session counters stay where they are: readers add up every live worker's (`counters`), so the new
    worker starts at 0 and nothing is copied (a copy raced with readers and lost what the old worker counted later).

    The live routes are copied into the map file first so the new worker starts with them; afterwards they
    are restored from `routes_source` (the database) when given, which also covers changes made mid-reload.
    """
    cfg = cfg or gateway_config()
    master = MasterCLI(cfg.master_socket)
    admin = RuntimeAPI(cfg.admin_socket)
    live = [(r.host_key, r.session_id, r.address) for r in routes_list(cfg=cfg)]
    routes_map_write(cfg, live)
    config_render(cfg)
    config_check(cfg)
    before, old_workers = _master_state(master)
    # A stopping worker drops every table entry no stream uses at once (HAProxy 2.6): its tables are kept now.
    counters_keep(cfg, cut=False)
    master.reload()

    def reloaded():
        reloads, workers = _master_state(master)
        new = [w for w in workers if w not in old_workers]
        return reloads > before and new and admin.ping()

    _wait(reloaded, timeout=timeout, what="the reloaded HAProxy worker")
    if routes_source is not None:
        routes_restore(routes_source(), cfg=cfg)


def counters_keep(cfg: GatewayConfig, *, cut: bool = True, timeout: float = 3.0) -> int:
    """Keep every live worker's table in the run dir, where `counters_read` finds it once the worker is gone.

    Right before a reload, as they are (`cut=False`). Before a stop: no new requests, every stream cut (a
    WebSocket's bytes are counted when it closes), then the tables. Returns how many were kept. What a worker
    counts after its table was kept for a reload (requests finishing in it, WebSockets open across the reload)
    is lost: a stopping worker drops an entry as its last stream closes (see docs/GATEWAY.md)."""
    workers = counters.workers_list(cfg)
    if cut:
        for _, run in workers:
            run("disable frontend hearth_gateway")
        for _, run in workers:
            for line in run("show sess").splitlines():
                if any(fe in line for fe in (" fe=hearth_gateway ", " fe=hearth_static_compress ")):
                    run(f"shutdown session {line.split(':', 1)[0]}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(counters.streams_open(run) for _, run in workers):
            time.sleep(0.02)
    expire_ms = counters.duration_ms(cfg.table_expire)
    for generation, run in workers:
        counters.retire(cfg, generation, counters.table_parse(run(f"show table {TABLE}"), expire_ms))
    return len(workers)


def gateway_keys_rotate(cfg: GatewayConfig | None = None, **reload_kwargs) -> str:
    """Rotate the per-install JWT key with no token ever refused: accept the new key everywhere, then sign
    with it. Tokens signed with the previous key stay valid until they expire. Returns the new kid."""
    accepting, final = tokens.keys_rotate()
    tokens.keys_write(accepting)
    gateway_reload(cfg, **reload_kwargs)
    tokens.keys_write(final)
    gateway_reload(cfg, **reload_kwargs)
    return final[0].kid


def _die_with_parent() -> None:
    """In the child before exec: HAProxy gets SIGTERM if Hearth's process dies, so it is never orphaned."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class GatewayProcess:
    """HAProxy in master-worker mode, in the foreground of this process (`manage.py gateway`, tests)."""

    def __init__(self, cfg: GatewayConfig | None = None, *, routes_source: RoutesSource | None = None, stderr=None):
        self.cfg = cfg or gateway_config()
        self.routes_source = routes_source
        self.proc: subprocess.Popen | None = None
        self.stderr = stderr
        self.first_requests = FirstRequestListener(self.cfg.trace_socket) if self.cfg.trace_first_request else None

    def start(self, *, timeout: float = 15.0) -> None:
        # Routes go into the map file before HAProxy starts, so there is no window without them.
        routes = []
        if self.routes_source is None:
            log.warning("gateway: no GATEWAY_ROUTES_SOURCE; starting with no routes")
        else:
            try:
                routes = list(self.routes_source())
            except Exception:  # the database is down: serve now; the reconciler puts the routes back
                log.exception("gateway: could not read the live routes; starting with none")
        for path in (self.cfg.admin_socket, self.cfg.master_socket):
            path.unlink(missing_ok=True)
        counters.retired_prune(self.cfg, older_than_seconds=counters.duration_ms(self.cfg.table_expire) / 1000)
        config_render(self.cfg, routes=routes)
        config_check(self.cfg)
        if self.first_requests is not None:
            self.first_requests.start()
        # Its standard output is this start's egress log (HAProxy writes it; it outlives HAProxy and Hearth).
        egress_fd = egress_log.log_open(self.cfg.run_dir)
        try:
            self.proc = subprocess.Popen(
                [settings.HAPROXY_BIN, "-W", "-db", "-f", str(self.cfg.config_path),
                 "-S", f"{self.cfg.master_socket},mode,600", "-p", str(self.cfg.pid_file)],
                cwd=self.cfg.run_dir, stdout=egress_fd, stderr=self.stderr, start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            os.close(egress_fd)
        admin = RuntimeAPI(self.cfg.admin_socket)

        def up():
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self.proc.returncode}")
            return self.cfg.master_socket.exists() and admin.ping()

        try:
            _wait(up, timeout=timeout, what="HAProxy to start")
        except BaseException:
            self.stop()
            raise
        log.info("gateway: HAProxy %s up on port %s with %d routes", self.proc.pid, self.cfg.port, len(routes))

    def reload(self, **kwargs) -> None:
        gateway_reload(self.cfg, routes_source=self.routes_source, **kwargs)

    def stop(self, *, timeout: float = 10.0) -> None:
        try:
            self._stop(timeout)
        finally:
            if self.first_requests is not None:  # after HAProxy, which logs to it until it exits
                self.first_requests.stop()

    def _stop(self, timeout: float) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            counters_keep(self.cfg)
        except Exception:  # stop anyway; the counters since the last reclaim tick are lost
            log.exception("gateway: could not keep the counters before stopping")
        self.proc.send_signal(signal.SIGTERM)  # hard stop: the master stops its workers, then exits
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def kill(self) -> None:
        """Die like a crash (tests: HAProxy lost, Hearth restarts it and restores the routes)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def wait(self) -> int:
        return self.proc.wait()
