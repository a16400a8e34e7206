"""A local container's resource limits written straight into its cgroup files (v1 or v2, cgroupfs or systemd driver),
the values and the order runc's `update` writes for the engine's `POST /containers/<id>/update`, without the
engine's round trip (about 19 ms of dockerd and runc per claim).

Where the files are is learned once per engine from one container (`layout_learn`: its init process's
/proc/<pid>/cgroup, resolved through this process's /proc/self/mountinfo) and reused for every other container of
that engine, with the container's id put in: a claim reads and writes a handful of small files and asks the engine
nothing. Anything this module cannot do raises CgroupUnavailable, and the caller uses the engine's endpoint.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass

# The v1 controllers a claim writes to (blkio only where the kernel has a weight file, as dockerd decides).
V1_CONTROLLERS = ("memory", "cpu", "pids", "blkio")
# What docker's update sends for NanoCpus: a 100 ms period and the quota for that many cores in it.
CPU_PERIOD_US = 100_000


class CgroupUnavailable(Exception):
    """The limits could not be written here (no such directory or file, a write refused): use the engine's update."""


@dataclass(frozen=True)
class Layout:
    """Where an engine's containers' cgroups are: `version` 1 (one directory per controller) or 2 (one directory);
    `dirs` maps a v1 controller (v2: "") to a directory with `{id}` where the container's id goes."""

    version: int
    dirs: dict
    systemd: bool  # a `docker-<id>.scope` unit: systemd keeps its own copy of the limits (docs/RUNTIME.md)
    blkio_weight: bool = False  # v1: the kernel has a weight file at the hierarchy's root (dockerd's own check)

    def directory(self, engine_id: str, controller: str = "") -> str:
        return self.dirs[controller].replace("{id}", engine_id)


# --- learning the layout ------------------------------------------------------------------------------------------


def _mounts(mountinfo: str) -> list[tuple[str, str, str, set]]:
    """(fstype, root, mount point, super options) of every cgroup and cgroup2 mount in a mountinfo text."""
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 10:
            continue
        after = fields[fields.index("-") + 1:]
        fstype, options = after[0], set(after[2].split(",")) if len(after) > 2 else set()
        if fstype in ("cgroup", "cgroup2"):
            root, point = fields[3], fields[4].replace("\\040", " ")
            found.append((fstype, root, point, options))
    return found


def _under_mount(root: str, point: str, path: str) -> str | None:
    """The directory of cgroup `path` (as /proc/<pid>/cgroup names it) under a mount of hierarchy `root`."""
    if not path.startswith("/") or "/.." in path:  # outside this process's cgroup namespace
        return None
    if root == "/":
        return point.rstrip("/") + path
    if path == root or path.startswith(root.rstrip("/") + "/"):
        return point.rstrip("/") + path[len(root.rstrip("/")):]
    return None


def layout_parse(*, engine_id: str, proc_cgroup: str, mountinfo: str) -> Layout:
    """The layout of the engine of container `engine_id`, from its init process's /proc/<pid>/cgroup and this
    process's mountinfo. v1 when the cpu, memory and pids controllers are on v1 hierarchies (cgroup v1 or hybrid),
    else v2."""
    paths, unified = {}, None
    for line in proc_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            unified = path
        for controller in controllers.split(","):
            if controller:
                paths[controller] = path
    mounts = _mounts(mountinfo)
    if all(c in paths for c in ("cpu", "memory", "pids")):
        version, dirs, points = 1, {}, {}
        for controller in V1_CONTROLLERS:
            for fstype, root, point, options in mounts:
                if fstype == "cgroup" and controller in options and controller in paths:
                    directory = _under_mount(root, point, paths[controller])
                    if directory is not None:
                        dirs[controller], points[controller] = directory, point
                        break
        if any(c not in dirs for c in ("cpu", "memory", "pids")):
            raise CgroupUnavailable(f"the v1 hierarchies of {paths} are not mounted here")
    elif unified is not None:
        version, dirs = 2, {}
        for fstype, root, point, _ in mounts:
            if fstype == "cgroup2" and (directory := _under_mount(root, point, unified)) is not None:
                dirs[""] = directory
                break
        if "" not in dirs:
            raise CgroupUnavailable(f"the cgroup2 hierarchy of {unified} is not mounted here")
    else:
        raise CgroupUnavailable("no cgroup found for the container's process")
    if any(d.count(engine_id) != 1 for d in dirs.values()):
        raise CgroupUnavailable(f"the container's cgroup is not named after its id: {dirs}")
    blkio_weight = False
    if version == 1 and "blkio" in dirs:
        # dockerd passes the weight on only if the hierarchy's mount point has a weight file (else "Weight
        # discarded"); BFQ has none at the root, so on v1 its weight is discarded too.
        blkio_weight = any(os.path.exists(os.path.join(points["blkio"], name))
                           for name in ("blkio.weight", "blkio.bfq.weight"))
    systemd = any(f"docker-{engine_id}.scope" in d for d in dirs.values())
    return Layout(version=version, dirs={c: d.replace(engine_id, "{id}") for c, d in dirs.items()},
                  systemd=systemd, blkio_weight=blkio_weight)


def layout_learn(*, engine_id: str, pid: int) -> Layout:
    """The layout of the engine that runs `engine_id` (its init process is `pid`)."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            proc_cgroup = f.read()
        with open("/proc/self/mountinfo") as f:
            mountinfo = f.read()
    except OSError as exc:
        raise CgroupUnavailable(f"reading the cgroup of process {pid}: {exc}") from exc
    layout = layout_parse(engine_id=engine_id, proc_cgroup=proc_cgroup, mountinfo=mountinfo)
    if not all(os.path.isdir(layout.directory(engine_id, c)) for c in layout.dirs):
        raise CgroupUnavailable(f"the cgroup directories {layout.dirs} of {engine_id[:12]} are not there")
    return layout


# --- writing --------------------------------------------------------------------------------------------------


def _write(directory: str, name: str, value) -> None:
    # O_TRUNC does nothing to a cgroup file; it makes a plain file behave like one (as runc's own tests do).
    try:
        fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, str(value).encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise CgroupUnavailable(f"writing {value} to {directory}/{name}: {exc.strerror}") from exc


def _read_int(directory: str, name: str) -> int:
    try:
        with open(os.path.join(directory, name)) as f:
            return int(f.read().strip())
    except (OSError, ValueError) as exc:
        raise CgroupUnavailable(f"reading {directory}/{name}: {exc}") from exc


def cpu_weight_v2(shares: int) -> int:
    """runc's (1.1, Debian 12's engine) conversion of CPU shares [2, 262144] to a cgroup v2 cpu.weight [1, 10000]."""
    return 1 + ((shares - 2) * 9999) // 262142


def io_weight_v2(blkio_weight: int) -> int:
    """runc's conversion of a block-I/O weight [10, 1000] to a cgroup v2 io.weight [1, 10000] (without BFQ)."""
    return 1 + ((blkio_weight - 10) * 9999) // 990


def cpu_quota_us(cpus: float) -> int:
    """The quota docker sets for NanoCpus: NanoCpus * period / 1e9, in integers as dockerd computes it."""
    return int(cpus * 1e9) * CPU_PERIOD_US // 10**9


def resources_write(layout: Layout, engine_id: str, resources) -> None:
    """Write `resources` (runtime.base.Resources) into the container's cgroup as runc's update would."""
    memory = int(resources.memory_mb) * 1024 * 1024
    if layout.version == 1:
        _v1_write(layout, engine_id, resources, memory)
    else:
        _v2_write(layout.directory(engine_id), resources, memory)


def _v1_write(layout, engine_id, resources, memory):
    # runc's order of subsystems: memory, cpu, pids, blkio.
    directory = layout.directory(engine_id, "memory")
    if not os.path.exists(os.path.join(directory, "memory.memsw.limit_in_bytes")):
        _write(directory, "memory.limit_in_bytes", memory)  # no swap accounting: dockerd drops MemorySwap
    elif _read_int(directory, "memory.limit_in_bytes") < memory:
        # The kernel keeps memory <= memory+swap: raising, memsw first; lowering, memory first.
        _write(directory, "memory.memsw.limit_in_bytes", memory)
        _write(directory, "memory.limit_in_bytes", memory)
    else:
        _write(directory, "memory.limit_in_bytes", memory)
        _write(directory, "memory.memsw.limit_in_bytes", memory)
    directory = layout.directory(engine_id, "cpu")
    _write(directory, "cpu.shares", int(resources.cpu_weight))
    if _read_int(directory, "cpu.shares") != int(resources.cpu_weight):
        raise CgroupUnavailable(f"cpu.shares {resources.cpu_weight} was clamped by the kernel")
    if cpu_quota_us(resources.cpus):  # NanoCpus 0 leaves the quota as it is
        _write(directory, "cpu.cfs_period_us", CPU_PERIOD_US)
        _write(directory, "cpu.cfs_quota_us", cpu_quota_us(resources.cpus))
    _write(layout.directory(engine_id, "pids"), "pids.max", int(resources.pids_limit))
    if resources.io_weight and layout.blkio_weight:
        directory = layout.directory(engine_id, "blkio")
        name = "blkio.weight" if os.path.exists(os.path.join(directory, "blkio.weight")) else "blkio.bfq.weight"
        _write(directory, name, int(resources.io_weight))


def _v2_write(directory, resources, memory):
    # runc's order in fs2: pids, memory (swap first), io, cpu.
    _write(directory, "pids.max", int(resources.pids_limit))
    try:
        _write(directory, "memory.swap.max", 0)  # Memory = MemorySwap: no swap
    except CgroupUnavailable as exc:
        # Without swap accounting the file is absent, and runc ignores it when disabling swap.
        if not isinstance(exc.__cause__, OSError) or exc.__cause__.errno != errno.ENOENT:
            raise
    _write(directory, "memory.max", memory)
    if resources.io_weight:
        if os.path.exists(os.path.join(directory, "io.bfq.weight")):
            _write(directory, "io.bfq.weight", int(resources.io_weight))
        elif os.path.exists(os.path.join(directory, "io.weight")):
            _write(directory, "io.weight", io_weight_v2(int(resources.io_weight)))
    _write(directory, "cpu.weight", cpu_weight_v2(int(resources.cpu_weight)))
    if cpu_quota_us(resources.cpus):
        _write(directory, "cpu.max", f"{cpu_quota_us(resources.cpus)} {CPU_PERIOD_US}")
