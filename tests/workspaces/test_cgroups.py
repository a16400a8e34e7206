"""A claim's resources written straight into the container's cgroup (workspaces/runtime/cgroups.py), pinned against
the engine's own update: real Docker (this host: cgroup v1, cgroupfs driver) for v1; for v2, which cannot run here,
a temporary directory shaped like a v2 cgroup, checked against the values the engine wrote on v1."""
import os
import stat
import time

import pytest

from tests.workspaces.fixtures_runtime import *  # noqa: F403
from workspaces.runtime import DockerRuntime, Resources, RuntimeUnavailable, cgroups

pytestmark = pytest.mark.docker

# A warm container (make_container's spec: 0.5 cpus, 64 MB, 64 pids, at a low CPU weight), then a claim below
# each of its caps, then one above them.
WARM = {"cpu_weight": 48, "cpus": 0.5, "memory_mb": 64, "pids_limit": 64}
LOWER = Resources(cpu_weight=256, cpus=0.25, memory_mb=48, pids_limit=32, io_weight=100)
RAISE = Resources(cpu_weight=2048, cpus=1.0, memory_mb=96, pids_limit=128, io_weight=1000)
# Files that differ between two containers, or over time, whatever their limits.
VOLATILE = ("cgroup.procs", "tasks", "failcnt", "max_usage", "usage", "stat", "pressure", "events", "reset")


def _settings(runtime, engine_id):
    """Every readable, writable (a setting, not a counter) cgroup file of a container: {controller/file: value}."""
    layout = cgroups.layout_learn(engine_id=engine_id, pid=runtime._pid(engine_id))
    found = {}
    for controller in layout.dirs:
        directory = layout.directory(engine_id, controller)
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            mode = os.stat(path).st_mode
            if not (mode & stat.S_IWUSR and mode & stat.S_IRUSR) or any(v in name for v in VOLATILE):
                continue
            try:
                with open(path) as f:
                    found[f"{controller}/{name}"] = f.read().strip()
            except OSError:
                continue
    return found


def _two_warm(make_container, docker_runtime):
    (a, _), (b, _) = make_container(**WARM), make_container(**WARM)
    return a.engine_id, b.engine_id


def test_the_direct_write_sets_every_file_the_engines_update_sets(make_container, docker_runtime):
    """The same Resources through the engine's update (container A) and through the cgroup files (container B):
    every file the update changed, lowering then raising, has the same value in B, and B changed nothing else."""
    a, b = _two_warm(make_container, docker_runtime)
    assert _settings(docker_runtime, a) == _settings(docker_runtime, b)  # two warm containers look alike
    for resources in (LOWER, RAISE):
        before_a, before_b = _settings(docker_runtime, a), _settings(docker_runtime, b)
        docker_runtime._resources_update(a, resources)
        layout = cgroups.layout_learn(engine_id=b, pid=docker_runtime._pid(b))
        cgroups.resources_write(layout, b, resources)
        after_a, after_b = _settings(docker_runtime, a), _settings(docker_runtime, b)
        changed_a = {k for k in after_a if after_a[k] != before_a.get(k)}
        changed_b = {k for k in after_b if after_b[k] != before_b.get(k)}
        assert {"cpu/cpu.shares", "cpu/cpu.cfs_quota_us", "memory/memory.limit_in_bytes",
                "memory/memory.memsw.limit_in_bytes", "pids/pids.max"} <= changed_a
        assert changed_b == changed_a
        assert {k: after_b[k] for k in changed_a} == {k: after_a[k] for k in changed_a}
        assert after_b["memory/memory.limit_in_bytes"] == str(resources.memory_mb << 20)


def test_a_claim_on_a_local_engine_writes_the_cgroup_and_the_engine_keeps_the_warm_values(make_container,
                                                                                          docker_runtime):
    """resources_set on this host's engine: the limits are in force at once, with no engine call; `docker inspect`
    still shows the values the container was created with (docs/RUNTIME.md)."""
    container, _ = make_container(**WARM)
    docker_runtime.resources_set(container.engine_id, LOWER)  # learns the layout
    (b, _) = make_container(**WARM)
    calls = []
    original = docker_runtime.api._post_json
    docker_runtime.api._post_json = lambda *a, **k: calls.append(a) or original(*a, **k)
    try:
        docker_runtime.resources_set(b.engine_id, LOWER)
    finally:
        docker_runtime.api._post_json = original
    assert calls == []
    found = _settings(docker_runtime, b.engine_id)
    assert (found["cpu/cpu.shares"], found["cpu/cpu.cfs_quota_us"], found["pids/pids.max"]) == ("256", "25000", "32")
    host = docker_runtime.api.inspect_container(b.engine_id)["HostConfig"]
    assert (host["CpuShares"], host["NanoCpus"], host["PidsLimit"]) == (48, 500_000_000, 64)


def test_a_cgroup_that_cannot_be_written_falls_back_to_the_engines_update(make_container, docker_runtime, tmp_path):
    """A layout that leads nowhere (a directory not found, a write refused): the engine's update applies the limits,
    and the next claims use it for a while instead of failing each time."""
    container, _ = make_container(**WARM)
    docker_runtime._cgroup_layout = cgroups.Layout(version=1, dirs={c: str(tmp_path / c / "{id}") for c in
                                                                    ("memory", "cpu", "pids")}, systemd=False)
    try:
        docker_runtime.resources_set(container.engine_id, LOWER)
        assert docker_runtime._cgroups_off_until > time.monotonic()
    finally:
        docker_runtime._cgroups_off_until = 0.0
        docker_runtime._cgroup_layout = None
    host = docker_runtime.api.inspect_container(container.engine_id)["HostConfig"]
    assert (host["CpuShares"], host["NanoCpus"], host["PidsLimit"]) == (256, 250_000_000, 32)
    assert _settings(docker_runtime, container.engine_id)["cpu/cpu.shares"] == "256"


@pytest.mark.parametrize("url", ["unix:///nonexistent/docker.sock", "tcp://127.0.0.1:9"])
def test_an_engine_that_does_not_answer_or_is_remote_goes_through_the_engine(url):
    """A local engine that is down cannot say where its container's cgroup is (RuntimeUnavailable: the open answers
    503 as before); a remote one is never written to directly (its cgroups are on another host)."""
    runtime = DockerRuntime(url, node_name="elsewhere", timeout=2)
    with pytest.raises(RuntimeUnavailable):
        runtime.resources_set("ab" * 32, LOWER)
    assert runtime._cgroup_layout is None and runtime._cgroups_off_until == 0.0


# --- cgroup v2 (not on this host: a directory tree shaped like one) --------------------------------------------

# runc 1.1's shares -> cpu.weight, as a table (1 + (shares - 2) * 9999 / 262142): 1024 shares is weight 39, not 100.
CPU_WEIGHTS = {2: 1, 48: 2, 256: 10, 1024: 39, 2048: 79, 262144: 10000}


def _v2_tree(root, engine_id, *, bfq=False):
    """/sys/fs/cgroup/system.slice/docker-<id>.scope of a systemd-driven v2 host, with its files at their defaults."""
    directory = root / "system.slice" / f"docker-{engine_id}.scope"
    directory.mkdir(parents=True)
    files = {"cpu.weight": "100", "cpu.max": "max 100000", "memory.max": "max", "memory.swap.max": "max",
             "pids.max": "max", "io.weight": "default 100", "cgroup.controllers": "cpu io memory pids"}
    if bfq:
        files["io.bfq.weight"] = "default 100"
    for name, value in files.items():
        (directory / name).write_text(value + "\n")
    proc = f"0::/system.slice/docker-{engine_id}.scope\n"
    mountinfo = f"35 24 0:30 / {root} rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate\n"
    return directory, cgroups.layout_parse(engine_id=engine_id, proc_cgroup=proc, mountinfo=mountinfo)


def test_the_v2_conversions_follow_runc():
    assert {shares: cgroups.cpu_weight_v2(shares) for shares in CPU_WEIGHTS} == CPU_WEIGHTS
    assert [cgroups.io_weight_v2(w) for w in (10, 100, 500, 1000)] == [1, 910, 4950, 10000]


@pytest.mark.parametrize("bfq", [False, True])
def test_the_v2_write_matches_what_the_engine_wrote_on_v1(make_container, docker_runtime, tmp_path, bfq):
    """The engine's update on this host's v1 cgroup gives the values; the v2 write must say the same in v2's words:
    cpu.max = quota and period, memory.max = the memory limit, no swap (memsw = memory), pids.max, the weight
    converted as runc converts it, the I/O weight as is under BFQ, converted otherwise."""
    container, _ = make_container(**WARM)
    directory, layout = _v2_tree(tmp_path, container.engine_id, bfq=bfq)
    assert (layout.version, layout.systemd) == (2, True)
    for resources in (LOWER, RAISE):
        docker_runtime._resources_update(container.engine_id, resources)
        v1 = _settings(docker_runtime, container.engine_id)
        cgroups.resources_write(layout, container.engine_id, resources)
        v2 = {p.name: p.read_text().strip() for p in directory.iterdir()}
        assert v2["cpu.max"] == f"{v1['cpu/cpu.cfs_quota_us']} {v1['cpu/cpu.cfs_period_us']}"
        assert v2["memory.max"] == v1["memory/memory.limit_in_bytes"]
        assert v1["memory/memory.memsw.limit_in_bytes"] == v1["memory/memory.limit_in_bytes"]
        assert v2["memory.swap.max"] == "0"
        assert v2["pids.max"] == v1["pids/pids.max"]
        assert v2["cpu.weight"] == str(CPU_WEIGHTS[int(v1["cpu/cpu.shares"])])
        if bfq:
            assert (v2["io.bfq.weight"], v2["io.weight"]) == (str(resources.io_weight), "default 100")
        else:
            assert v2["io.weight"] == str(cgroups.io_weight_v2(resources.io_weight))


def test_with_the_systemd_driver_the_engine_records_the_limits_later(make_container, docker_runtime, tmp_path):
    """systemd puts its own copy of a scope's limits back on `daemon-reload`: after the direct write the engine's
    update runs off the request path, so that copy (and `docker inspect`) agree. The files here are a v2 tree; the
    update goes to the real container."""
    container, _ = make_container(**WARM)
    directory, layout = _v2_tree(tmp_path, container.engine_id)
    docker_runtime._cgroup_layout = layout
    try:
        docker_runtime.resources_set(container.engine_id, LOWER)
        assert (directory / "cpu.weight").read_text() == "10"  # written at once
        deadline = time.monotonic() + 10
        while docker_runtime.api.inspect_container(container.engine_id)["HostConfig"]["CpuShares"] != 256:
            assert time.monotonic() < deadline, "the engine never recorded the claim's limits"
            time.sleep(0.05)
    finally:
        docker_runtime._cgroup_layout = None


def test_the_layout_is_found_through_a_nested_mount_and_refused_when_not_named_after_the_container():
    """A v1 hierarchy mounted with a root below / (Hearth in a container with the host's cgroups bound in) and a
    systemd-driver path; a cgroup path without the container's id cannot be reused for other containers."""
    engine_id = "ab" * 32
    proc = (f"12:cpu,cpuacct:/system.slice/docker-{engine_id}.scope\n4:memory:/system.slice/docker-{engine_id}.scope\n"
            f"3:pids:/system.slice/docker-{engine_id}.scope\n0::/\n")
    mountinfo = (
        "30 24 0:26 /system.slice /cg/cpu rw - cgroup cgroup rw,cpu,cpuacct\n"
        "31 24 0:27 / /cg/memory rw - cgroup cgroup rw,memory\n"
        "32 24 0:28 / /cg/pids rw - cgroup cgroup rw,pids\n"
    )
    layout = cgroups.layout_parse(engine_id=engine_id, proc_cgroup=proc, mountinfo=mountinfo)
    assert layout.version == 1 and layout.systemd
    assert layout.directory(engine_id, "cpu") == f"/cg/cpu/docker-{engine_id}.scope"
    assert layout.directory("cd" * 32, "memory") == f"/cg/memory/system.slice/docker-{'cd' * 32}.scope"
    with pytest.raises(cgroups.CgroupUnavailable):
        cgroups.layout_parse(engine_id=engine_id, proc_cgroup=proc.replace(engine_id, "x"), mountinfo=mountinfo)
