"""Hardening, checked from inside running workspace containers (docker exec as the workspace user)."""
import os
import threading
import time

import pytest

from tests.workspaces.fixtures_runtime import docker_exec

pytestmark = pytest.mark.docker


def _status_field(runtime, engine_id, field):
    _, out = docker_exec(runtime, engine_id, "grep", f"^{field}:", "/proc/self/status")
    return out.split(":", 1)[1].strip()


def test_no_capabilities_and_no_new_privileges(make_container, docker_runtime):
    container, _ = make_container()
    for field in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
        assert int(_status_field(docker_runtime, container.engine_id, field), 16) == 0, field
    assert _status_field(docker_runtime, container.engine_id, "NoNewPrivs") == "1"
    code, out = docker_exec(docker_runtime, container.engine_id, "id", "-u")
    assert (code, out.strip()) == (0, "1000")


def test_root_filesystem_is_read_only_and_tmp_is_scratch(make_container, docker_runtime):
    container, _ = make_container()
    for path in ("/x", "/etc/passwd-new", "/bin/evil"):
        code, out = docker_exec(docker_runtime, container.engine_id, "touch", path)
        assert code != 0 and "Read-only file system" in out, (path, out)
    code, _ = docker_exec(docker_runtime, container.engine_id, "sh", "-c", "echo x > /tmp/scratch && cat /tmp/scratch")
    assert code == 0


def test_no_docker_socket_inside(make_container, docker_runtime):
    container, _ = make_container()
    probe = "test -e /var/run/docker.sock -o -e /run/docker.sock"
    code, _ = docker_exec(docker_runtime, container.engine_id, "sh", "-c", probe)
    assert code == 1
    _, found = docker_exec(docker_runtime, container.engine_id, "sh", "-c", "find / -xdev -name '*.sock' 2>/dev/null")
    assert "docker" not in found
    mounts = docker_runtime.api.inspect_container(container.engine_id)["Mounts"]
    assert [m["Destination"] for m in mounts] == ["/home/coder"]
    assert all("docker.sock" not in m["Source"] for m in mounts)


def _pids_cgroup(runtime, engine_id):
    """The container's pids cgroup directory on the host (cgroup v1 or v2)."""
    pid = runtime.api.inspect_container(engine_id)["State"]["Pid"]
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.strip().split(":", 2)
            if "pids" in controllers.split(","):
                return f"/sys/fs/cgroup/pids{path}"
            if controllers == "":
                return f"/sys/fs/cgroup{path}"
    raise AssertionError("no pids cgroup")


def _read(path):
    with open(path) as f:
        return f.read().strip()


def test_fork_bomb_is_stopped_by_the_pids_limit(make_container, docker_runtime):
    limit = 48
    container, _ = make_container(pids_limit=limit)
    cgroup = _pids_cgroup(docker_runtime, container.engine_id)
    assert _read(f"{cgroup}/pids.max") == str(limit)
    bomb = "b() { while :; do b & done; }; b"  # keeps retrying, so it keeps hitting the limit
    exec_id = docker_runtime.api.exec_create(container.engine_id, ["sh", "-c", bomb])["Id"]
    docker_runtime.api.exec_start(exec_id, detach=True)
    refused, peak = 0, 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and refused < 50:
        peak = max(peak, int(_read(f"{cgroup}/pids.current")))
        refused = int(_read(f"{cgroup}/pids.events").split()[1])  # "max N": forks refused at the limit
        time.sleep(0.05)
    assert refused >= 50, refused  # the bomb keeps running into the limit
    assert peak <= limit, peak
    # The host still forks freely while the container is at its limit.
    assert os.waitpid(os.spawnvp(os.P_NOWAIT, "true", ["true"]), 0)[1] == 0
    docker_runtime.remove(container.engine_id)  # ending the container ends the bomb
    assert docker_runtime.inspect(container.engine_id) is None


def test_memory_hog_is_oom_killed(make_container, docker_runtime):
    container, _ = make_container(memory_mb=32)
    # A shell variable of 96 MB: well past the 32 MB limit, with no swap to hide in.
    hog = "x=$(head -c 100663296 /dev/zero | tr '\\0' a); echo survived ${#x}"
    code, out = docker_exec(docker_runtime, container.engine_id, "sh", "-c", hog, timeout=60)
    assert code == 137 and "survived" not in out, (code, out)
    state = docker_runtime.api.inspect_container(container.engine_id)["State"]
    if not state["Running"]:
        # The kernel may pick the container's own processes as well: then the whole workspace was OOM-killed
        # (the reconciler marks it LOST and ends its session), never the host.
        assert state["OOMKilled"], state
        return
    _, control = docker_exec(docker_runtime, container.engine_id, "cat", "/sys/fs/cgroup/memory/memory.oom_control")
    oom_kills = dict(line.split() for line in control.splitlines() if line.strip()).get("oom_kill")
    if oom_kills is not None:  # cgroup v1 with a recent kernel counts kills
        assert int(oom_kills) >= 1
    # Only the hog died: the workspace is still up and serving.
    assert docker_runtime.wait_ready(container, timeout=5, path="/healthz")


def test_another_workspace_is_unreachable(make_container, docker_runtime):
    a, _ = make_container()
    b, _ = make_container()
    assert docker_runtime.wait_ready(b, timeout=5, path="/healthz")  # the host (and HAProxy) reach it
    results = {}

    def probe(name, url):
        # busybox 1.35's `wget -T` crashes (SIGSEGV): bound it with `timeout` instead.
        # `-Y off`: not through HTTP_PROXY (every container has it; busybox's wget ignores NO_PROXY).
        results[name] = docker_exec(docker_runtime, a.engine_id, "timeout", "3", "wget", "-Y", "off", "-q", "-O", "-",
                                    url)

    threads = [
        threading.Thread(target=probe, args=("other", f"http://{b.address}/healthz")),
        threading.Thread(target=probe, args=("self", f"http://{a.address}/healthz")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    code, out = results["other"]
    assert code != 0 and "ok" not in out, out
    assert results["self"][0] == 0 and results["self"][1].strip() == "ok"  # wget works: the refusal is the network
