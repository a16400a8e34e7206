"""The Docker runtime: hardened workspace containers on one engine per Node, through the docker SDK."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import logging
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

import docker
import requests
from docker.types import LogConfig, Mount

from core import telemetry
from core.background import BackgroundQueue

from ..network import NetworkPolicyError, network_rules_ensure, proxy_environment, proxy_policy
from . import cgroups, egress_counter
from .base import (
    CONTAINER_END_EVENTS,
    ContainerExists,
    ContainerSpec,
    ImageNotFound,
    Resources,
    Runtime,
    RuntimeContainer,
    RuntimeError_,
    RuntimeEvent,
    RuntimeUnavailable,
    engine_is_local,
)

log = logging.getLogger(__name__)

# The uid:gid every Hearth image's files are made for (`coder`); a container runs as the spec's own uid instead.
WORKSPACE_USER = "1000:1000"
DEFAULT_CPU_WEIGHT = 1024
DEFAULT_IO_WEIGHT = 500
DEFAULT_TMPFS = {"/tmp": "rw,nosuid,nodev,size=256m,mode=1777"}
LOG_CONFIG = LogConfig(type="json-file", config={"max-size": "1m", "max-file": "2"})


def _setting(name, default):
    try:
        from django.conf import settings

        return getattr(settings, name, default)
    except Exception:  # usable without Django configured (scripts, bench)
        return os.environ.get(name, default)


def network_name(instance: str) -> str:
    return f"hearth-{instance}"


@contextlib.contextmanager
def _engine_errors(runtime: DockerRuntime, action: str):
    """Turn the SDK's many exceptions into the two the pool understands, with a message naming the engine; and a
    span `docker.<verb>` for the call (inside traced work only: the engine follower's heartbeat pings make none)."""
    with telemetry.span(f"docker.{action.split(' ', 1)[0]}", {"hearth.node": runtime.node_name,
                                                               "docker.action": action}, child_only=True):
        with _sdk_errors(runtime, action):
            yield


@contextlib.contextmanager
def _sdk_errors(runtime: DockerRuntime, action: str):
    try:
        yield
    except (RuntimeUnavailable, RuntimeError_):
        raise
    except docker.errors.ImageNotFound as exc:
        raise ImageNotFound(
            f"{action} on node {runtime.node_name} ({runtime.url}): image not found: {exc.explanation}. "
            "Nothing can be pulled here: build it with `make images`."
        ) from exc
    except docker.errors.APIError as exc:
        status = exc.status_code
        if status == 409 and "already in use" in str(exc.explanation):
            raise ContainerExists(f"{action} on node {runtime.node_name}: {exc.explanation}") from exc
        if status is not None and status >= 500 and "connect" in str(exc.explanation).lower():
            raise RuntimeUnavailable(f"{action}: engine {runtime.url} failed: {exc.explanation}") from exc
        raise RuntimeError_(f"{action} on node {runtime.node_name} refused ({status}): {exc.explanation}") from exc
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError, TimeoutError) as exc:
        raise RuntimeUnavailable(
            f"{action}: the Docker engine of node {runtime.node_name} at {runtime.url} does not answer "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    except docker.errors.DockerException as exc:
        raise RuntimeUnavailable(
            f"{action}: cannot talk to the Docker engine of node {runtime.node_name} at {runtime.url}: {exc}"
        ) from exc


class DockerRuntime(Runtime):
    """One Docker engine. Thread-safe; create one per process (see runtime_for)."""

    def __init__(self, url: str, *, node_name: str = "local", instance: str | None = None,
                 timeout: float | None = None, subnet: str | None = None):
        self.url = url
        self.node_name = node_name
        self.instance = instance or _setting("HEARTH_INSTANCE", "hearth")
        self.timeout = float(timeout or _setting("HEARTH_DOCKER_TIMEOUT", 15))
        # Only for several engines on one host: their automatic subnets would overlap (same default pools).
        self.subnet = subnet or (_setting("HEARTH_NETWORK_SUBNETS", None) or {}).get(url)
        self.network = network_name(self.instance)
        self._client = None
        self._network_id: str | None = None
        self._bridge_address: tuple[str, str] | None = None  # (subnet, gateway) once the policy is ensured
        self._lock = threading.Lock()
        self._network_lock = threading.Lock()
        self._cgroup_layout: cgroups.Layout | None = None  # learned from the first container claimed
        self._cgroups_off_until = 0.0  # monotonic: after a failed direct write, the engine's update for a while

    def __repr__(self):
        return f"<DockerRuntime {self.node_name} {self.url}>"

    # -- plumbing ---------------------------------------------------------------------------------

    @property
    def api(self) -> docker.APIClient:
        """The low-level client, made on first use (it asks the engine for its API version then)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    with _engine_errors(self, "connect"):
                        self._client = docker.DockerClient(
                            base_url=self.url, version="auto", timeout=self.timeout, max_pool_size=32
                        )
        return self._client.api

    def close(self):
        if self._client is not None:
            self._client.close()
            self._client = None

    def ensure_network(self) -> str:
        """The id of the instance's bridge on this engine, made on demand; its containers cannot reach each other."""
        if self._network_id:
            return self._network_id
        # The engine's duplicate check is racy (eight concurrent creates made eight networks of one name here), and
        # containers then fail to start ("network is ambiguous"): one creator at a time on this host, and any
        # duplicate made from another host is removed again, the oldest network winning.
        digest = hashlib.sha1(f"{self.url} {self.network}".encode()).hexdigest()[:16]
        lock_path = Path(tempfile.gettempdir()) / f"hearth-net-{digest}.lock"
        with self._network_lock, open(lock_path, "a") as lock_file, _engine_errors(self, "ensure network"):
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            found = self._networks_named()
            if not found:
                try:
                    ipam = None
                    if self.subnet:
                        ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=self.subnet)])
                    self.api.create_network(
                        self.network,
                        driver="bridge",
                        check_duplicate=True,
                        options={"com.docker.network.bridge.enable_icc": "false"},
                        labels={"hearth.instance": self.instance, "hearth.node": self.node_name},
                        ipam=ipam,
                    )
                except docker.errors.APIError as exc:
                    if exc.status_code != 409:  # 409: made meanwhile from elsewhere
                        raise
                found = self._networks_named()
            if not found:
                raise RuntimeError_(f"network {self.network} on node {self.node_name} vanished while being made")
            keep, *extra = found
            for net in extra:
                with contextlib.suppress(docker.errors.APIError):
                    self.api.remove_network(net["Id"])
            self._network_id = keep["Id"]
        self.network_policy_ensure()
        return self._network_id

    def network_policy_ensure(self) -> None:
        """Install or repair the instance's firewall chains for this engine's bridge (workspaces.network).

        Only for an engine on this host (a unix socket): a remote engine's host needs Hearth's rules installed there.
        """
        if not _setting("HEARTH_NETWORK_POLICY", True) or not engine_is_local(self.url):
            return
        if not self._network_id:
            self.ensure_network()  # which comes back here
            return
        with _engine_errors(self, "inspect network"):
            network = self.api.inspect_network(self._network_id)
        options = network.get("Options") or {}
        bridge = options.get("com.docker.network.bridge.name") or f"br-{self._network_id[:12]}"
        ipam = ((network.get("IPAM") or {}).get("Config") or [{}])[0]
        try:
            port = int(_setting("EGRESS_PROXY_PORT", 0) or 0)
            proxy = proxy_policy(port=port, user=_setting("EGRESS_PROXY_USER", "tinyproxy")) if port else None
            network_rules_ensure(instance=self.instance, bridge=bridge, proxy=proxy)
        except NetworkPolicyError as exc:
            raise RuntimeError_(f"network policy of node {self.node_name}: {exc}") from exc
        if ipam.get("Subnet") and ipam.get("Gateway"):
            self._bridge_address = (ipam["Subnet"], ipam["Gateway"])

    def bridge_address(self) -> tuple[str, str] | None:
        """(subnet, gateway) of the instance's network on this local engine, where the egress proxy is reached."""
        self.network_policy_ensure()
        return self._bridge_address

    def _proxy_environment(self) -> dict[str, str]:
        """Every container gets the proxy's address (a warm container's plan is not known yet); the firewall decides
        at the claim whether it reaches the allow-list proxy (proxy plans), the open one (open plans) or nothing."""
        port = int(_setting("EGRESS_PROXY_PORT", 0) or 0)
        if not port or self._bridge_address is None:
            return {}
        subnet, gateway = self._bridge_address
        return proxy_environment(gateway=gateway, port=port, subnet=subnet)

    def _networks_named(self) -> list[dict]:
        found = [n for n in self.api.networks(names=[self.network]) if n["Name"] == self.network]
        return sorted(found, key=lambda n: (n.get("Created", ""), n["Id"]))

    def _address(self, networks: dict, labels: dict) -> str | None:
        port = labels.get("hearth.port")
        net = networks.get(self.network) or next((n for n in networks.values() if n.get("IPAddress")), None)
        ip = (net or {}).get("IPAddress")
        return f"{ip}:{port}" if ip and port else None

    def _from_inspect(self, data: dict) -> RuntimeContainer:
        labels = data["Config"].get("Labels") or {}
        return RuntimeContainer(
            engine_id=data["Id"],
            name=data["Name"].lstrip("/"),
            status=data["State"]["Status"],
            address=self._address(data["NetworkSettings"].get("Networks") or {}, labels),
            labels=labels,
        )

    # -- the interface ----------------------------------------------------------------------------

    def ping(self) -> None:
        with _engine_errors(self, "ping"):
            self.api.ping()

    def create(self, spec: ContainerSpec) -> RuntimeContainer:
        try:
            return self._create_and_start(spec)
        except RuntimeError_ as exc:
            message = str(exc).lower()
            if "network" not in message or "not found" not in message:
                raise
            self._network_id = None  # removed behind our back (e.g. by an operator): make it again, once
            return self._create_and_start(spec)

    def _create_and_start(self, spec: ContainerSpec) -> RuntimeContainer:
        engine_id = self._create_container(spec, self.ensure_network())["Id"]
        try:
            with _engine_errors(self, f"start {spec.name}"):
                self.api.start(engine_id)
                container = self._from_inspect(self.api.inspect_container(engine_id))
                if container.status != "running" or not container.address:
                    logs = self.api.logs(engine_id, tail=20).decode(errors="replace").strip()
                    raise RuntimeError_(
                        f"start {spec.name} on node {self.node_name}: container is {container.status} without an "
                        f"address right after start; its log: {logs[-500:] or '(empty)'}"
                    )
            self._egress_counter_install(engine_id, spec.internal_port, name=spec.name)
            return container
        except BaseException:
            # Never leave a half-made container behind; if the engine is gone the reconciler removes it later.
            try:
                self.remove(engine_id)
            except Exception:
                log.warning("could not remove half-made container %s on %s", spec.name, self.node_name, exc_info=True)
            raise

    def _create_container(self, spec: ContainerSpec, network: str) -> dict:
        labels = {"hearth.port": str(spec.internal_port), "hearth.slot": spec.slot_path, **spec.labels}
        labels = {str(k): str(v) for k, v in labels.items()}
        memory = f"{int(spec.memory_mb)}m"
        with _engine_errors(self, f"create {spec.name}"):
            host_config = self.api.create_host_config(
                cap_drop=["ALL"],
                cap_add=list(spec.cap_add) or None,
                security_opt=["no-new-privileges:true"],
                read_only=True,
                tmpfs={**DEFAULT_TMPFS, **spec.tmpfs},
                mem_limit=memory,
                memswap_limit=memory,  # no swap: a memory hog is OOM-killed, not slowed down
                nano_cpus=int(spec.cpus * 1e9),
                # The spec's CPU weight (a warm container's is low) and the normal I/O weight until the claim.
                cpu_shares=int(spec.cpu_weight),
                blkio_weight=DEFAULT_IO_WEIGHT,
                pids_limit=int(spec.pids_limit),
                mounts=[Mount(target=spec.mount_target, source=spec.slot_path, type="bind", propagation="rslave")],
                network_mode=network,
                restart_policy={"Name": "no"},
                init=True,
                ipc_mode="private",
                log_config=LOG_CONFIG,
            )
            created = self.api.create_container(
                spec.image,
                name=spec.name,
                user=f"{int(spec.user)}:{int(spec.user)}",
                environment={**{str(k): str(v) for k, v in spec.environment.items()}, **self._proxy_environment()},
                labels=labels,
                host_config=host_config,
                detach=True,
            )
        return created

    def remove(self, engine_id: str) -> None:
        with _engine_errors(self, f"remove {engine_id[:12]}"):
            try:
                self.api.remove_container(engine_id, force=True, v=True)
            except docker.errors.NotFound:
                return
            except docker.errors.APIError as exc:
                if exc.status_code == 409 and "in progress" in str(exc.explanation):
                    return
                raise

    def resources_set(self, engine_id: str, resources: Resources) -> None:
        """On an engine of this host, written into the container's cgroup (runtime/cgroups.py: no engine round
        trip; the engine's record, `docker inspect`'s HostConfig, keeps the values the container was created with);
        anywhere else, or if that fails, through the engine's update endpoint."""
        if engine_is_local(self.url) and time.monotonic() >= self._cgroups_off_until:
            try:
                layout = self._cgroups_layout(engine_id)
                with telemetry.span("cgroup.write", {"hearth.node": self.node_name}, child_only=True):
                    cgroups.resources_write(layout, engine_id, resources)
            except cgroups.CgroupUnavailable as exc:
                log.warning("cgroup of %s on %s not written (%s): through the engine's update for a minute",
                            engine_id[:12], self.node_name, exc)
                self._cgroup_layout, self._cgroups_off_until = None, time.monotonic() + 60
            else:
                if layout.systemd:
                    self._record_later(engine_id, resources)
                return
        self._resources_update(engine_id, resources)

    def _cgroups_layout(self, engine_id: str) -> cgroups.Layout:
        """Where this engine's containers' cgroups are, learned once from `engine_id`'s init process."""
        layout = self._cgroup_layout
        if layout is None:
            pid = self._pid(engine_id)  # the engine down: RuntimeUnavailable, as the update would raise
            if pid is None:
                raise cgroups.CgroupUnavailable(f"{engine_id[:12]} is not running")
            layout = self._cgroup_layout = cgroups.layout_learn(engine_id=engine_id, pid=pid)
        return layout

    def _record_later(self, engine_id: str, resources: Resources) -> None:
        """With the systemd driver, systemd keeps its own copy of a scope's limits and puts it back on a
        `systemctl daemon-reload` (moby#41233): the engine's update, off the request path, sets that copy (and the
        engine's record) to what was just written."""
        _recorder.put((self, engine_id, resources))

    def _record(self, engine_id: str, resources: Resources) -> None:
        try:
            self._resources_update(engine_id, resources)
        except (RuntimeUnavailable, RuntimeError_) as exc:  # e.g. released and removed meanwhile
            log.info("recording the resources of %s on %s in the engine: %s", engine_id[:12], self.node_name, exc)

    def _resources_update(self, engine_id: str, resources: Resources) -> None:
        memory = int(resources.memory_mb) * 1024 * 1024
        body = {"CpuShares": int(resources.cpu_weight), "NanoCpus": int(resources.cpus * 1e9),
                "Memory": memory, "MemorySwap": memory, "PidsLimit": int(resources.pids_limit)}
        if resources.io_weight:
            body["BlkioWeight"] = int(resources.io_weight)
        with _engine_errors(self, f"update {engine_id[:12]}"):
            # The SDK's update_container knows neither NanoCpus nor PidsLimit; the engine's endpoint does.
            answer = self.api._result(self.api._post_json(self.api._url("/containers/{0}/update", engine_id),
                                                          data=body), True)
        for warning in (answer or {}).get("Warnings") or []:  # e.g. no I/O weight without BFQ: the rest applies
            log.info("update %s on %s: %s", engine_id[:12], self.node_name, warning)

    def _counts_egress(self) -> bool:
        return bool(_setting("HEARTH_EGRESS_COUNTER", True)) and engine_is_local(self.url)

    def _pid(self, engine_id: str) -> int | None:
        with _engine_errors(self, f"inspect {engine_id[:12]}"):
            try:
                state = self.api.inspect_container(engine_id)["State"]
            except docker.errors.NotFound:
                return None
        return (state.get("Pid") or None) if state.get("Running") else None

    def _egress_counter_install(self, engine_id: str, port: int, *, name: str) -> None:
        if not self._counts_egress():
            return
        pid = self._pid(engine_id)
        if pid is None:  # its entrypoint failed just after the start's inspect (an init process execs it then)
            raise RuntimeError_(f"start {name} on node {self.node_name}: the container stopped right after start")
        try:
            egress_counter.counter_install(pid=pid, port=port)
        except egress_counter.EgressCounterError as exc:
            raise RuntimeError_(f"egress counter of {engine_id[:12]} on node {self.node_name}: {exc}") from exc

    def egress_read(self, engine_id: str) -> int | None:
        """Bytes the container sent out by itself (not its answers to the gateway); None when it cannot be read
        (a remote engine, a container that is gone or stopped)."""
        if not self._counts_egress():
            return None
        pid = self._pid(engine_id)
        if pid is None:
            return None
        try:
            return egress_counter.counter_read(pid=pid)
        except egress_counter.EgressCounterError as exc:
            log.warning("egress counter of %s on %s: %s", engine_id[:12], self.node_name, exc)
            return None

    def inspect(self, engine_id: str) -> RuntimeContainer | None:
        with _engine_errors(self, f"inspect {engine_id[:12]}"):
            try:
                return self._from_inspect(self.api.inspect_container(engine_id))
            except docker.errors.NotFound:
                return None

    def list(self, *, instance: str) -> list[RuntimeContainer]:
        with _engine_errors(self, "list containers"):
            rows = self.api.containers(all=True, filters={"label": [f"hearth.instance={instance}"]})
        return [
            RuntimeContainer(
                engine_id=row["Id"],
                name=(row.get("Names") or ["/"])[0].lstrip("/"),
                status=row["State"],
                address=self._address((row.get("NetworkSettings") or {}).get("Networks") or {}, row["Labels"] or {}),
                labels=row["Labels"] or {},
            )
            for row in rows
        ]

    def events(self, *, instance: str, since_ns: int | None = None) -> _EventStream:
        # The engine takes "<seconds>.<nanoseconds>": a reconnect starts at the last event handled, none skipped.
        since = None if since_ns is None else f"{since_ns // 10**9}.{since_ns % 10**9:09d}"
        filters = {"type": ["container"], "event": list(CONTAINER_END_EVENTS), "label": [f"hearth.instance={instance}"]}
        with _engine_errors(self, "follow events"):
            return _EventStream(self.api.events(since=since, filters=filters, decode=True))

    def wait_ready(self, container: RuntimeContainer, *, timeout: float, path: str | None = None) -> bool:
        if not container.address:
            return False
        host, port = container.address.rsplit(":", 1)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                if path is None:
                    with socket.create_connection((host, int(port)), timeout=min(0.5, remaining)):
                        return True
                conn = http.client.HTTPConnection(host, int(port), timeout=min(1.0, remaining))
                try:
                    conn.request("GET", path)
                    if conn.getresponse().status < 500:
                        return True
                finally:
                    conn.close()
            except OSError:
                pass
            time.sleep(0.02)

    # -- extras (not in the Runtime interface) ----------------------------------------------------

    def image_exists(self, image: str) -> bool:
        with _engine_errors(self, f"inspect image {image}"):
            try:
                self.api.inspect_image(image)
                return True
            except docker.errors.ImageNotFound:
                return False


class _EventStream:
    """The engine's event stream as RuntimeEvents; ends when the engine closes it (or close() from another thread)."""

    def __init__(self, stream):
        self._stream = stream

    def __iter__(self):
        for event in self._stream:  # the SDK ends the iteration when the connection breaks
            actor = event.get("Actor") or {}
            yield RuntimeEvent(action=event.get("Action") or event.get("status") or "",
                               engine_id=actor.get("ID") or event.get("id") or "",
                               labels=actor.get("Attributes") or {}, time_ns=int(event.get("timeNano") or 0))

    def close(self):
        with contextlib.suppress(Exception):  # already closed, or the socket is gone with the engine
            self._stream.close()


_runtimes: dict[tuple[int, str], DockerRuntime] = {}
_runtimes_lock = threading.Lock()


def _records_make(batch):
    for runtime, engine_id, resources in batch:
        runtime._record(engine_id, resources)


_recorder = BackgroundQueue("hearth-cgroup-record", _records_make)


def runtime_for(node) -> DockerRuntime:
    """The runtime of a Node (anything with `.engine_url` and `.name`), one per engine URL and process."""
    url = getattr(node, "engine_url", None) or _setting("DOCKER_HOST", "unix:///var/run/docker.sock")
    # Keyed by pid too: a client made before a fork (Celery prefork) must not share its sockets with children.
    key = (os.getpid(), url)
    runtime = _runtimes.get(key)
    if runtime is None:
        with _runtimes_lock:
            runtime = _runtimes.get(key)
            if runtime is None:
                runtime = _runtimes[key] = DockerRuntime(url, node_name=getattr(node, "name", None) or url)
    return runtime
