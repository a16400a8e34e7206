"""The container runtime interface: what the pool asks of an engine, independent of Docker."""
from __future__ import annotations

import abc
from dataclasses import dataclass, field

# An engine reached through a unix socket runs on this host: Hearth can reach its containers' firewall rules, network
# namespaces and cgroups directly. One rule, used by the network policy, the egress counter and the cgroup writes.
LOCAL_ENGINE_SCHEME = "unix://"


def engine_is_local(url: str) -> bool:
    return url.startswith(LOCAL_ENGINE_SCHEME)


class RuntimeUnavailable(Exception):
    """The engine does not answer (down, unreachable, timed out)."""


class RuntimeError_(Exception):  # noqa: N801 — the trailing underscore keeps the builtin RuntimeError usable
    """The engine answered but refused (unknown image, bad spec, name taken, container died at start)."""


class ImageNotFound(RuntimeError_):
    """The image is not on the engine (nothing can be pulled here: build it with `make images`)."""


class ContainerExists(RuntimeError_):
    """A container with that name already exists on the engine (e.g. left by an interrupted provisioning)."""


@dataclass(frozen=True)
class ContainerSpec:
    name: str  # "hearth-<instance>-c<container pk>"
    image: str
    internal_port: int
    cpus: float
    memory_mb: int
    pids_limit: int
    environment: dict  # str -> str
    labels: dict  # hearth.instance, hearth.node, hearth.template, hearth.container (+ more)
    slot_path: str  # host dir under the rshared slot root; mounted rslave at mount_target
    mount_target: str = "/home/coder"
    # The host uid (and gid) the container runs as; its own, so per-user kernel limits are not shared.
    user: int = 1000
    # Capabilities an image needs back after cap_drop ALL; none of Hearth's images needs any.
    cap_add: tuple = ()
    # Scratch space on a read-only root: path -> tmpfs options. /tmp is always there (code-server's IPC sockets).
    tmpfs: dict = field(default_factory=dict)
    # CPU weight until the claim sets the plan's: low for a warm container, so a refill yields to claimed ones.
    cpu_weight: int = 1024


@dataclass(frozen=True)
class Resources:
    """What a running container may use, set again at its claim from the tenant's plan."""

    cpu_weight: int  # relative share under contention (cgroup cpu.shares; 1024 normal)
    cpus: float  # quota cap in cores
    memory_mb: int
    pids_limit: int
    io_weight: int  # 10-1000 block-I/O weight; 0 leaves it unset


@dataclass
class RuntimeContainer:
    engine_id: str
    name: str
    status: str  # docker's: created, running, exited, ...
    address: str | None  # "ip:port" reachable from the host (and HAProxy)
    labels: dict

    @property
    def ip(self) -> str | None:
        return self.address.rsplit(":", 1)[0] if self.address else None


@dataclass(frozen=True)
class RuntimeEvent:
    """A container of the installation ended on the engine, as the engine's event stream says."""

    action: str  # die, oom or destroy
    engine_id: str
    labels: dict
    time_ns: int  # the engine's clock: where a reconnect asks the stream to start again


# What the event stream reports: the ways a container stops running (a `stop` or `kill` is followed by `die`).
CONTAINER_END_EVENTS = ("die", "oom", "destroy")


class Runtime(abc.ABC):
    """One container engine (a Node). Every call may raise RuntimeUnavailable or RuntimeError_."""

    @abc.abstractmethod
    def ping(self) -> None: ...

    @abc.abstractmethod
    def create(self, spec: ContainerSpec) -> RuntimeContainer:
        """Create and start a container; on any failure nothing is left behind and the error is raised."""

    @abc.abstractmethod
    def remove(self, engine_id: str) -> None:
        """Force-remove; a container that is already gone is fine."""

    @abc.abstractmethod
    def inspect(self, engine_id: str) -> RuntimeContainer | None: ...

    @abc.abstractmethod
    def list(self, *, instance: str) -> list[RuntimeContainer]:
        """The Hearth-labelled containers of one installation, in any state."""

    @abc.abstractmethod
    def resources_set(self, engine_id: str, resources: Resources) -> None:
        """Change a running container's CPU, memory, process and I/O limits in place."""

    def egress_read(self, engine_id: str) -> int | None:
        """Bytes the container sent out by itself, cumulative since it started; None if this engine cannot tell."""
        return None

    @abc.abstractmethod
    def events(self, *, instance: str, since_ns: int | None = None):
        """The installation's CONTAINER_END_EVENTS from `since_ns` (the engine's clock; None: from now), as an
        iterator of RuntimeEvent that blocks for the next one, ends when the engine closes the stream, and has a
        close() that ends it from another thread."""

    @abc.abstractmethod
    def wait_ready(self, container: RuntimeContainer, *, timeout: float, path: str | None = None) -> bool:
        """True once the container's port accepts connections (or, with `path`, answers HTTP below 500)."""
