"""The Docker runtime against the real engine: life cycle, refusals, nothing half-made, two engines."""
import io
import tarfile
import uuid

import pytest
from django.conf import settings

from workspaces.runtime import (
    ContainerExists,
    ContainerSpec,
    DockerRuntime,
    ImageNotFound,
    RuntimeError_,
    RuntimeUnavailable,
    runtime_for,
)

pytestmark = pytest.mark.docker


def _names(runtime):
    return {c.name for c in runtime.list(instance=settings.HEARTH_INSTANCE)}


def _spec(slot, **overrides):
    key = uuid.uuid4().hex[:10]
    spec = dict(
        name=f"hearth-{settings.HEARTH_INSTANCE}-x{key}",
        image="hearth/tiny:1",
        internal_port=8080,
        cpus=0.5,
        memory_mb=64,
        pids_limit=64,
        environment={},
        labels={"hearth.instance": settings.HEARTH_INSTANCE, "hearth.test": "1"},
        slot_path=str(slot),
    )
    spec.update(overrides)
    return ContainerSpec(**spec)


def test_create_inspect_list_remove(make_container, docker_runtime):
    container, _ = make_container()
    assert container.status == "running"
    assert container.address.endswith(":8080")
    assert container.labels["hearth.template"] == "tiny"
    assert container.labels["hearth.port"] == "8080"
    assert docker_runtime.wait_ready(container, timeout=5)
    assert docker_runtime.wait_ready(container, timeout=5, path="/healthz")

    seen = docker_runtime.inspect(container.engine_id)
    assert (seen.name, seen.status, seen.address) == (container.name, "running", container.address)
    listed = {c.engine_id: c for c in docker_runtime.list(instance=settings.HEARTH_INSTANCE)}
    assert listed[container.engine_id].address == container.address
    assert listed[container.engine_id].labels["hearth.container"] == container.labels["hearth.container"]
    assert docker_runtime.list(instance=f"{settings.HEARTH_INSTANCE}-nobody") == []

    docker_runtime.remove(container.engine_id)
    docker_runtime.remove(container.engine_id)  # idempotent
    assert docker_runtime.inspect(container.engine_id) is None
    assert container.name not in _names(docker_runtime)


def test_container_config_is_hardened(make_container, docker_runtime):
    container, slot = make_container(cpus=0.25, memory_mb=48, pids_limit=32, environment={"A": "1"})
    data = docker_runtime.api.inspect_container(container.engine_id)
    host = data["HostConfig"]
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["ReadonlyRootfs"] is True
    assert "/tmp" in host["Tmpfs"]
    assert host["Memory"] == 48 * 2**20 and host["MemorySwap"] == 48 * 2**20
    assert host["NanoCpus"] == 250_000_000
    assert host["PidsLimit"] == 32
    assert host["Init"] is True
    assert host["Privileged"] is False
    assert host["RestartPolicy"]["Name"] == "no"
    assert host["NetworkMode"] == docker_runtime.ensure_network()
    assert list(data["NetworkSettings"]["Networks"]) == [docker_runtime.network]
    assert data["Config"]["User"] == "1000:1000"
    assert "A=1" in data["Config"]["Env"]
    mounts = data["Mounts"]
    assert [(m["Type"], m["Source"], m["Destination"], m["Propagation"]) for m in mounts] == [
        ("bind", str(slot), "/home/coder", "rslave")
    ]
    assert not any("docker.sock" in (m.get("Source") or "") for m in mounts)


def test_network_disables_inter_container_traffic(make_container, docker_runtime):
    make_container()
    net = docker_runtime.api.inspect_network(docker_runtime.network)
    assert net["Driver"] == "bridge"
    assert net["Options"]["com.docker.network.bridge.enable_icc"] == "false"
    assert net["Labels"]["hearth.instance"] == settings.HEARTH_INSTANCE


def test_a_network_removed_behind_its_back_is_made_again(slots, tiny_image):
    from workspaces import storage

    instance = f"{settings.HEARTH_INSTANCE}-netgone"
    runtime = DockerRuntime(settings.DOCKER_HOST, node_name="main", instance=instance)
    try:
        first = runtime.create(_spec(storage.slot_create("net1")))
        runtime.remove(first.engine_id)
        runtime.api.remove_network(runtime.ensure_network())
        second = runtime.create(_spec(storage.slot_create("net2")))
        assert second.status == "running" and second.address
        runtime.remove(second.engine_id)
    finally:
        for net in runtime.api.networks(names=[runtime.network]):
            runtime.api.remove_network(net["Id"])
        runtime.close()


def test_concurrent_creates_share_one_new_network(slots, tiny_image):
    """Eight threads, one fresh instance: one network is made, every container starts on it."""
    from concurrent.futures import ThreadPoolExecutor

    from workspaces import storage

    instance = f"{settings.HEARTH_INSTANCE}-race"
    runtimes = [DockerRuntime(settings.DOCKER_HOST, node_name="main", instance=instance) for _ in range(2)]
    specs = [_spec(storage.slot_create(f"race{i}")) for i in range(8)]
    made = []
    try:
        with ThreadPoolExecutor(8) as pool:  # two runtimes stand for two worker processes
            made = list(pool.map(lambda i: runtimes[i % 2].create(specs[i]), range(8)))
        assert all(c.status == "running" and c.address for c in made)
        assert len({c.address for c in made}) == 8
        nets = [n for n in runtimes[0].api.networks(names=[runtimes[0].network]) if n["Name"] == runtimes[0].network]
        assert len(nets) == 1
        for c in made:
            attached = runtimes[0].api.inspect_container(c.engine_id)["NetworkSettings"]["Networks"]
            assert attached[runtimes[0].network]["NetworkID"] == nets[0]["Id"]
    finally:
        for c in made:
            runtimes[0].remove(c.engine_id)
        for net in runtimes[0].api.networks(names=[runtimes[0].network]):
            runtimes[0].api.remove_network(net["Id"])
        for runtime in runtimes:
            runtime.close()


def test_unknown_image_is_a_clear_error_and_leaves_nothing(slots, docker_runtime):
    from workspaces import storage

    spec = _spec(storage.slot_create("noimage"), image="hearth/does-not-exist:0")
    with pytest.raises(ImageNotFound, match="make images"):
        docker_runtime.create(spec)
    assert spec.name not in _names(docker_runtime)


def test_start_failure_removes_the_container(slots, docker_runtime, docker_client):
    """The image exists but its entrypoint does not: create succeeds, start fails, nothing is left."""
    from workspaces import storage

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("README")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"x\n"))
    image = "hearth/broken-test:1"
    docker_runtime.api.import_image_from_data(
        buf.getvalue(), repository="hearth/broken-test", tag="1",
        changes=['ENTRYPOINT ["/no/such/entrypoint"]', f"LABEL hearth.instance={settings.HEARTH_INSTANCE}"],
    )
    try:
        spec = _spec(storage.slot_create("broken"), image=image)
        # With an init process (tini) as PID 1 the failed exec happens just after `start` returns, so create
        # either sees the container already dead (and cleans up), or hands back one that never becomes ready.
        try:
            container = docker_runtime.create(spec)
        except RuntimeError_ as exc:
            assert not isinstance(exc, RuntimeUnavailable)
            assert "start" in str(exc)
        else:
            assert not docker_runtime.wait_ready(container, timeout=5)
            docker_runtime.remove(container.engine_id)
        assert spec.name not in _names(docker_runtime)
        assert not docker_client.containers.list(all=True, filters={"name": spec.name})
    finally:
        docker_client.images.remove(image, force=True)


def test_missing_slot_is_refused(slots, docker_runtime):
    spec = _spec(slots / "never-created")
    with pytest.raises(RuntimeError_, match="refused"):
        docker_runtime.create(spec)
    assert spec.name not in _names(docker_runtime)


def test_name_taken_raises_container_exists(make_container, docker_runtime, slots):
    container, slot = make_container()
    with pytest.raises(ContainerExists):
        docker_runtime.create(_spec(slot, name=container.name))
    assert docker_runtime.inspect(container.engine_id).status == "running"


def test_engine_that_does_not_answer_is_unavailable(tmp_path):
    for url in (f"unix://{tmp_path}/no-dockerd.sock", "tcp://127.0.0.1:1"):
        runtime = DockerRuntime(url, node_name="ghost", timeout=2)
        with pytest.raises(RuntimeUnavailable, match="ghost"):
            runtime.ping()
        with pytest.raises(RuntimeUnavailable):
            runtime.list(instance="x")


def test_create_on_a_dead_engine_is_unavailable(slots):
    from workspaces import storage

    runtime = DockerRuntime("unix:///run/hearth-no-such-dockerd.sock", node_name="ghost", timeout=2)
    with pytest.raises(RuntimeUnavailable, match="does not answer|cannot talk"):
        runtime.create(_spec(storage.slot_create("dead")))


def test_runtime_for_is_cached_per_engine_url():
    class Node:
        def __init__(self, name, url):
            self.name, self.engine_url = name, url

    a = runtime_for(Node("a", "unix:///run/x-a.sock"))
    assert runtime_for(Node("a2", "unix:///run/x-a.sock")) is a
    assert runtime_for(Node("b", "unix:///run/x-b.sock")) is not a
    assert a.node_name == "a" and a.url == "unix:///run/x-a.sock"


def test_wait_ready_false_when_nothing_listens(make_container, docker_runtime):
    container, _ = make_container()
    ip = container.address.rsplit(":", 1)[0]
    closed = type(container)(container.engine_id, container.name, "running", f"{ip}:9", {})
    assert docker_runtime.wait_ready(closed, timeout=0.3) is False


@pytest.mark.slow
def test_two_engines_each_run_their_own_containers(make_container, docker_runtime, second_engine):
    main, _ = make_container(docker_runtime)
    other, _ = make_container(second_engine)
    assert docker_runtime.wait_ready(main, timeout=5, path="/healthz")
    assert second_engine.wait_ready(other, timeout=5, path="/healthz")
    assert main.address != other.address
    subnet_prefix = second_engine.subnet.rsplit(".", 1)[0] + "."  # its own subnet, never the main engine's
    assert other.address.startswith(subnet_prefix) and not main.address.startswith(subnet_prefix)
    main_ids = {c.engine_id for c in docker_runtime.list(instance=settings.HEARTH_INSTANCE)}
    other_ids = {c.engine_id for c in second_engine.list(instance=settings.HEARTH_INSTANCE)}
    assert main.engine_id in main_ids and main.engine_id not in other_ids
    assert other.engine_id in other_ids and other.engine_id not in main_ids
    assert docker_runtime.inspect(other.engine_id) is None
    second_engine.remove(other.engine_id)
    assert second_engine.inspect(other.engine_id) is None
    assert docker_runtime.inspect(main.engine_id).status == "running"


@pytest.mark.slow
def test_the_runtime_survives_an_engine_restart(make_container, second_engine, second_dockerd):
    container, _ = make_container(second_engine)
    second_dockerd.restart()
    # The same runtime object (its pooled connections are dead) answers again without being remade.
    second_engine.ping()
    after = second_engine.inspect(container.engine_id)
    assert after is not None and after.status == "exited"  # restart policy "no": the reconciler's business
    assert container.engine_id in {c.engine_id for c in second_engine.list(instance=settings.HEARTH_INSTANCE)}
    again, _ = make_container(second_engine)
    assert second_engine.wait_ready(again, timeout=10, path="/healthz")


def test_engine_going_away_is_unavailable_and_coming_back_works(second_engine, second_dockerd):
    second_dockerd.stop()
    try:
        with pytest.raises(RuntimeUnavailable, match="second"):
            second_engine.ping()
        with pytest.raises(RuntimeUnavailable):
            second_engine.list(instance=settings.HEARTH_INSTANCE)
    finally:
        second_dockerd.start()
    second_engine.ping()
