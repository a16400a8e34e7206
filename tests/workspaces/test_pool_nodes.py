"""Two Docker engines as two nodes: placement on the least-loaded node with room, and draining a node."""
import pytest

from tests.factories import MembershipFactory
from tests.workspaces.fixtures_pool import *  # noqa: F403
from workspaces import pool, services
from workspaces.models import Container, Node
from workspaces.runtime import runtime_for

pytestmark = [pytest.mark.django_db, pytest.mark.docker, pytest.mark.slow]
State = Container.State


@pytest.fixture
def two_nodes(node, second_engine):
    second = Node.objects.create(name="second", engine_url=second_engine.url, cpus=64, memory_mb=64 * 1024,
                                 max_containers=300)
    yield node, second
    from tests.workspaces.fixtures_pool import engine_cleanup

    engine_cleanup(second_engine.url)


def test_pool_is_kept_per_node_and_claims_take_any_node(two_nodes, tiny_template, tenant_e,
                                                                     make_workspace):
    main, second = two_nodes
    assert pool.pool_fill() == 4
    assert Container.objects.filter(node=main, state=State.WARM).count() == 2
    assert Container.objects.filter(node=second, state=State.WARM).count() == 2

    tiny_template.warm_min = tiny_template.warm_max = 0
    tiny_template.save()
    Container.objects.filter(node=main, state=State.WARM).update(state=State.CLAIMED)  # main is busier now
    members = [MembershipFactory(tenant=tenant_e) for _ in range(2)]
    sessions = [services.workspace_open(workspace=make_workspace(m, f"w{i}"), user=m.user).session
                for i, m in enumerate(members)]
    # Both warm containers on `second` are claimed first, regardless of node.
    assert {Container.objects.get(pk=s.container_id).node_id for s in sessions} == {second.pk}
    third = MembershipFactory(tenant=tenant_e)
    cold = services.workspace_open(workspace=make_workspace(third, "cold"), user=third.user).session
    assert cold.cold_start  # no warm container left on any node


def test_cold_start_picks_the_node_with_fewer_containers(two_nodes, tiny_template, tenant_e, make_workspace):
    main, second = two_nodes
    tiny_template.warm_min = tiny_template.warm_max = 0
    tiny_template.save()
    pool.container_provision(template=tiny_template, node=main, for_warm=False)  # main holds one more
    m = MembershipFactory(tenant=tenant_e)
    session = services.workspace_open(workspace=make_workspace(m), user=m.user).session
    assert session.cold_start and Container.objects.get(pk=session.container_id).node_id == second.pk


def test_a_full_node_is_skipped(two_nodes, tiny_template, tenant_e, make_workspace):
    main, second = two_nodes
    second.max_containers = 0
    second.save()
    assert pool.pool_fill() == 2
    assert not Container.objects.filter(node=second).exists()


def test_drain_ends_sessions_removes_warm_and_places_elsewhere(two_nodes, tiny_template, tenant_e, make_workspace):
    main, second = two_nodes
    pool.pool_fill()
    m = MembershipFactory(tenant=tenant_e)
    workspace = make_workspace(m)
    Container.objects.filter(node=main, state=State.WARM).update(state=State.CLAIMED)  # force the claim onto second
    session = services.workspace_open(workspace=workspace, user=m.user).session
    assert Container.objects.get(pk=session.container_id).node_id == second.pk
    Container.objects.filter(node=main, state=State.CLAIMED).update(state=State.WARM)

    services.node_drain(node=second, actor="staff")
    session.refresh_from_db()
    assert session.end_reason == "drained"
    assert not Container.objects.filter(node=second, state__in=Container.ACTIVE_STATES).exists()
    assert runtime_for(second).list(instance=second_instance()) == []
    assert pool.pool_fill() == 0  # main is at target; second is draining
    again = services.workspace_open(workspace=workspace, user=m.user).session
    assert Container.objects.get(pk=again.container_id).node_id == main.pk


def second_instance():
    from django.conf import settings

    return settings.HEARTH_INSTANCE
