"""Fixtures for the runtime and storage layers: the tiny image, Docker runtimes (a second dockerd too), slots."""
import os
import shutil
import socket
import subprocess
import threading
import uuid
from pathlib import Path

import pytest
from django.conf import settings

from tests.conftest import require_service
from tests.workspaces.dockerd import ExtraDockerd

REPO = Path(__file__).resolve().parents[2]
TINY_IMAGE = "hearth/tiny:1"
CODE_SERVER_IMAGE = "hearth/code-server:4.100.3"


def _instance():
    return settings.HEARTH_INSTANCE


def _cleanup_engine(runtime):
    """Remove this instance's test containers on an engine (never another instance's)."""
    for c in runtime.list(instance=_instance()):
        if c.labels.get("hearth.test") == "1":
            runtime.remove(c.engine_id)


@pytest.fixture(scope="session")
def docker_runtime():
    from workspaces.runtime import DockerRuntime

    runtime = DockerRuntime(settings.DOCKER_HOST, node_name="main")
    require_service("The Docker engine", runtime.ping)
    yield runtime
    _cleanup_engine(runtime)
    runtime.close()


def build_tiny_image(docker_host=None):
    env = {**os.environ, **({"DOCKER_HOST": docker_host} if docker_host else {})}
    subprocess.run([str(REPO / "scripts/images/build-tiny.sh"), TINY_IMAGE], check=True, env=env, timeout=120)


@pytest.fixture(scope="session")
def tiny_image(docker_runtime):
    if not docker_runtime.image_exists(TINY_IMAGE):
        build_tiny_image()
    return TINY_IMAGE


@pytest.fixture
def slots(settings):
    """A fresh rshared slot root under this test's STORAGE_ROOT, unmounted (with every bind) afterwards."""
    from workspaces import storage

    root = storage.slot_root()
    yield root
    storage.slot_root_release(root)


@pytest.fixture
def make_container(slots, tiny_image, docker_runtime):
    """make_container(runtime=None, image=tiny, **spec overrides) -> (RuntimeContainer, slot path); removed after.

    A tiny container is returned once its httpd answers (`ready=False` skips that wait).
    """
    from workspaces import storage
    from workspaces.runtime import ContainerSpec

    made = []

    def make(runtime=None, *, image=None, key=None, ready=True, **overrides):
        runtime = runtime or docker_runtime
        key = key or f"t{uuid.uuid4().hex[:10]}"
        slot = storage.slot_create(key)
        spec = dict(
            name=f"hearth-{_instance()}-{key}",
            image=image or tiny_image,
            internal_port=8080,
            cpus=0.5,
            memory_mb=64,
            pids_limit=64,
            environment={},
            labels={
                "hearth.instance": _instance(),
                "hearth.node": runtime.node_name,
                "hearth.template": "tiny",
                "hearth.container": key,
                "hearth.test": "1",
            },
            slot_path=str(slot),
        )
        spec.update(overrides)
        container = runtime.create(ContainerSpec(**spec))
        made.append((runtime, container, slot))
        if ready and spec["image"] == tiny_image:
            assert runtime.wait_ready(container, timeout=15, path="/healthz"), f"{container.name} never answered"
        return container, slot

    yield make
    for runtime, container, slot in made:
        runtime.remove(container.engine_id)
        storage.slot_remove(slot)


def docker_exec(runtime, engine_id, *cmd, timeout=30):
    """Run a command inside a container as its user; returns (exit code, output)."""
    exec_id = runtime.api.exec_create(engine_id, list(cmd))["Id"]
    output = runtime.api.exec_start(exec_id)
    code = runtime.api.exec_inspect(exec_id)["ExitCode"]
    return code, output.decode(errors="replace")


def cgroup_limits(runtime, engine_id):
    """(CPU shares, NanoCpus, memory MB, pids) in force for a running container, read from its cgroup: a claim
    writes them there, and the engine's HostConfig keeps the values it was created with (docs/RUNTIME.md)."""
    from workspaces.runtime import cgroups

    layout = cgroups.layout_learn(engine_id=engine_id, pid=runtime._pid(engine_id))

    def read(controller, name):
        with open(os.path.join(layout.directory(engine_id, controller), name)) as f:
            return f.read().split()

    if layout.version == 1:
        quota, period = int(read("cpu", "cpu.cfs_quota_us")[0]), int(read("cpu", "cpu.cfs_period_us")[0])
        shares, memory = int(read("cpu", "cpu.shares")[0]), int(read("memory", "memory.limit_in_bytes")[0])
        pids = int(read("pids", "pids.max")[0])
    else:  # the weight as shares: the inverse of runc's conversion, exact for the shares Hearth uses
        weight = int(read("", "cpu.weight")[0])
        shares = next(s for s in range(2, 262145) if cgroups.cpu_weight_v2(s) >= weight)
        quota, period = (int(v) for v in read("", "cpu.max"))
        memory, pids = int(read("", "memory.max")[0]), int(read("", "pids.max")[0])
    return shares, quota * 10**9 // period, memory >> 20, pids


@pytest.fixture(scope="session")
def second_dockerd(docker_runtime, tiny_image):
    """The second engine's daemon (ExtraDockerd), running, with the tiny image; stopped at the end."""
    if not shutil.which("dockerd") or os.geteuid() != 0:

        def missing():
            raise RuntimeError("a second engine needs the dockerd binary and root")

        require_service("a second dockerd", missing)
    daemon = ExtraDockerd(f"{_instance()}-dockerd2")
    daemon.remove_bridge()
    # Any runtime on this engine (runtime_for(node) too) puts its network in the engine's own subnet.
    settings.HEARTH_NETWORK_SUBNETS = {**settings.HEARTH_NETWORK_SUBNETS, daemon.url: daemon.subnet}
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()
        daemon.remove_bridge()


@pytest.fixture(scope="session")
def second_engine(second_dockerd, tiny_image):
    """A DockerRuntime on the second dockerd (node "second")."""
    from workspaces.runtime import DockerRuntime

    runtime = DockerRuntime(second_dockerd.url, node_name="second")
    assert runtime.subnet == second_dockerd.subnet
    if not runtime.image_exists(tiny_image):
        build_tiny_image(second_dockerd.url)
    yield runtime
    try:
        _cleanup_engine(runtime)
        for net in runtime.api.networks(names=[runtime.network]):
            runtime.api.remove_network(net["Id"])
    except Exception:  # the daemon may be down after a restart test; it is stopped next anyway
        pass
    runtime.close()


@pytest.fixture
def host_listener():
    """A TCP server on the host's 0.0.0.0 (as the web server once was): (port, accepted connections)."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", 0))
    server.listen(8)
    accepted = []

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(True)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1], accepted
    server.close()
