"""Fixtures for the runtime and storage layers: the tiny image, Docker runtimes (a second dockerd too), slots."""
import hashlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings

from tests.conftest import require_service

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


def _link_exists(name):
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0


class ExtraDockerd:
    """A dockerd of its own on this machine: own socket, data root, exec root, pidfile, bridge and address pool.

    A second dockerd deletes the host's docker0 (breaking the main engine's default bridge) when started with
    `--bridge none`, and on every start after the first when started with `--default-address-pool` (moby's
    "clear stale bridge network" path): both seen here. So it gets a bridge of its own, no address pool, and
    its Hearth network an explicit subnet (`subnet`, registered in settings.HEARTH_NETWORK_SUBNETS) that cannot
    overlap the main engine's. `--iptables=false` keeps it out of the main engine's firewall rules (its networks
    are therefore not isolated; isolation is tested on the main engine). `restart()` restarts only this daemon,
    so reconciler tests need not restart the dockerd everybody else is using.
    """

    def __init__(self, name):
        self.name = name
        self.sock = f"/run/{name}.sock"
        self.url = f"unix://{self.sock}"
        digest = hashlib.sha1(name.encode()).hexdigest()
        self.octet = 200 + int(digest, 16) % 50
        self.bridge = f"hbr-{digest[:8]}"
        self.subnet = f"10.{self.octet}.128.0/24"
        self.proc = None
        self.log = None

    def _args(self):
        return [
            shutil.which("dockerd"),
            f"--host={self.url}",
            f"--data-root=/var/lib/{self.name}",
            f"--exec-root=/run/{self.name}",
            f"--pidfile=/run/{self.name}.pid",
            f"--bridge={self.bridge}",
            "--iptables=false",
            "--ip-masq=false",
        ]

    def start(self, timeout=30):
        from workspaces.runtime import DockerRuntime

        if not _link_exists(self.bridge):
            subprocess.run(["ip", "link", "add", self.bridge, "type", "bridge"], check=True)
            subprocess.run(["ip", "addr", "add", f"10.{self.octet}.0.1/24", "dev", self.bridge], check=True)
            subprocess.run(["ip", "link", "set", self.bridge, "up"], check=True)
        self._stale_stop()
        had_docker0 = _link_exists("docker0")
        self.log = open(f"/tmp/{self.name}.log", "ab")
        self.proc = subprocess.Popen(self._args(), stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        probe = DockerRuntime(self.url, node_name=self.name, timeout=2)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    probe.ping()
                    if had_docker0 and not _link_exists("docker0"):
                        raise AssertionError(f"starting dockerd {self.name} deleted the main engine's docker0")
                    return
                except AssertionError:
                    raise
                except Exception:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"dockerd {self.name} did not start; see /tmp/{self.name}.log")
                    probe.close()
                    time.sleep(0.2)
        finally:
            probe.close()

    def _stale_stop(self, timeout=30):
        """A daemon left by an interrupted run still owns the socket: it would answer for ours (and stop() could
        not stop it). Stop it by its pidfile first."""
        try:
            pid = int(Path(f"/run/{self.name}.pid").read_text().strip())
            if f"--pidfile=/run/{self.name}.pid" not in Path(f"/proc/{pid}/cmdline").read_bytes().decode():
                return  # the pid was reused by another process
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:
                return
            time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)

    def stop(self):
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        self.log.close()

    def restart(self):
        self.stop()
        self.start()

    def remove_bridge(self):
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


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
