"""The Internet grant after an open (workspaces/egress_access.py), with committed transactions, the real granter
thread, the real engine and iptables: it lands after the open has answered; a session ended while it runs keeps no
access (the race held open at the `egress.locked` failpoint); a grant lost with its process, or refused by iptables
(counted on /metrics), is made by the reconciler.

The "Internet" is test_egress_proxy's network namespace of TEST-NET-2 hosts, reached directly (open plans).
"""
import threading
import time

import pytest
from django.conf import settings

from tests.workspaces.fixtures_pool import *  # noqa: F403
from tests.workspaces.fixtures_runtime import docker_exec
from tests.workspaces.test_egress_proxy import internet  # noqa: F401
from tests.workspaces.test_pool_crash import OPEN, _env, _kill, _shell, _wait_for_failpoint
from workspaces import egress_access, failpoints, network, pool, reconciler, services
from workspaces.models import Container, Session
from workspaces.runtime import runtime_for

pytestmark = [pytest.mark.django_db, pytest.mark.docker]


def _reaches(container, host):
    """A direct TCP connect from inside the container to host:80 (refused at once by the rules, else answered)."""
    code, out = docker_exec(runtime_for(container.node), container.engine_id, "sh", "-c",
                            f"timeout 3 nc -w 2 {host} 80 </dev/null 2>&1; echo exit=$?")
    return "exit=0" in out


def _listed():
    instance = settings.HEARTH_INSTANCE
    return network.egress_open_addresses(instance=instance) | network.egress_proxy_addresses(instance=instance)


def _ip(container):
    return container.address.rsplit(":", 1)[0]


@pytest.fixture
def open_plan(live_db, tenant_e):
    plan = tenant_e.plan
    plan.internet_access = "open"
    plan.save(update_fields=["internet_access"])
    return plan


@pytest.fixture
def held(monkeypatch, tmp_path):
    """The granter stops at `egress.locked` (the session's row locked, nothing granted) until the marker goes."""
    marker = tmp_path / "failpoint"
    monkeypatch.setattr(failpoints, "_ARMED", "egress.locked")
    monkeypatch.setenv("HEARTH_FAILPOINT_FILE", str(marker))
    yield marker
    marker.unlink(missing_ok=True)
    egress_access.egress_grants_wait_idle(10)


def _wait_for(marker, timeout=10):
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert time.monotonic() < deadline, "the granter never reached its failpoint"
        time.sleep(0.01)


def _open(workspace, member):
    pool.pool_fill()
    opened = services.workspace_open(workspace=workspace, user=member.user)
    container = Container.objects.select_related("node").get(pk=opened.session.container_id)
    assert not opened.resumed and container.claimed_at is not None
    return opened.session, container


def test_the_grant_lands_after_the_open_has_answered(open_plan, node, tiny_template, workspace, member, internet,  # noqa: F811
                                                     held):
    _, allowed, _ = internet
    session, container = _open(workspace, member)
    _wait_for(held)  # the open has answered; the granter holds the session's row, nothing is granted yet
    assert _ip(container) not in _listed()
    assert not _reaches(container, allowed)
    held.unlink()
    assert egress_access.egress_grants_wait_idle(10)
    assert _ip(container) in network.egress_open_addresses(instance=settings.HEARTH_INSTANCE)
    assert _reaches(container, allowed)


def test_a_session_ended_while_its_grant_runs_keeps_no_access(open_plan, node, tiny_template, workspace, member,
                                                              held):
    """The end waits for the granter's row lock, so the release's close always comes after the grant: the address
    (which the next container, of any tenant, may get) is closed at the end."""
    session, container = _open(workspace, member)
    _wait_for(held)
    ended = threading.Thread(target=services.session_close, kwargs={"session": session, "actor": member.user})
    ended.start()
    time.sleep(0.5)
    waited = ended.is_alive()  # for the granter's lock
    held.unlink()  # the grant lands now, then the end commits and the release closes the address
    ended.join(30)
    assert not ended.is_alive()
    assert egress_access.egress_grants_wait_idle(10)
    assert Session.objects.get(pk=session.pk).ended_at is not None
    assert _ip(container) not in _listed()
    assert waited


def test_a_grant_for_a_session_that_ended_first_grants_nothing(open_plan, node, tiny_template, workspace, member,
                                                               held):
    session, container = _open(workspace, member)
    _wait_for(held)
    held.unlink()
    assert egress_access.egress_grants_wait_idle(10)
    services.session_close(session=session, actor=member.user)
    assert _ip(container) not in _listed()
    # Asked again now (a late or repeated grant): the ended session is skipped under its lock.
    grant = egress_access._Grant(session.pk, container.pk, _ip(container), "open")
    assert egress_access._grant(grant) is False
    assert _ip(container) not in _listed()


def test_a_grant_lost_with_its_process_is_made_by_the_reconciler(open_plan, node, tiny_template, workspace, member,
                                                                 internet, tmp_path):  # noqa: F811
    """The open's process (as a web worker would) is SIGKILLed while its granter holds the row: the open had
    answered, the grant never ran. The reconciler's pass grants it."""
    _, allowed, _ = internet
    pool.pool_fill()
    marker, log = tmp_path / "failpoint", tmp_path / "shell.log"
    code = OPEN.format(workspace=workspace.pk, user=member.user.pk) + "; import time; time.sleep(120)"
    proc = _shell(code, _env("egress.locked", marker), log)
    try:
        _wait_for_failpoint(proc, marker, log)
    finally:
        _kill(proc)
    session = Session.objects.select_related("container__node").get(workspace=workspace, ended_at__isnull=True)
    container = session.container
    assert _ip(container) not in _listed()
    assert not _reaches(container, allowed)

    report = reconciler.reconcile()
    assert report["egress_granted"] == 1 and report["egress_closed"] == 0, report
    assert _ip(container) in network.egress_open_addresses(instance=settings.HEARTH_INSTANCE)
    assert _reaches(container, allowed)
    assert reconciler.reconcile()["egress_granted"] == 0  # idempotent


def test_a_failed_grant_is_counted_and_made_by_the_reconciler(settings, node, tiny_template, tenant_e, workspace,
                                                              member):
    """iptables refuses the grant (here: the instance's chains are not there): the open is not failed for it, the
    failure is counted on /metrics, and the reconciler's pass grants the address."""
    from tests.metrics_support import scrape

    tenant_e.plan.internet_access = "open"
    tenant_e.plan.save(update_fields=["internet_access"])
    session = services.workspace_open(workspace=workspace, user=member.user).session
    container = Container.objects.select_related("node").get(pk=session.container_id)
    ip, instance = _ip(container), settings.HEARTH_INSTANCE
    network.egress_close(instance=instance, ip=ip)  # the open's own grant undone: as if it had never landed
    failures = scrape().value("hearth_egress_grant_failures_total")
    settings.HEARTH_INSTANCE = f"{instance}-gone"
    egress_access._grant_or_count(egress_access._Grant(session.pk, container.pk, ip, "open"))
    settings.HEARTH_INSTANCE = instance
    assert scrape().value("hearth_egress_grant_failures_total") == failures + 1
    assert ip not in _listed()

    report = reconciler.reconcile()
    assert report["egress_granted"] == 1, report
    assert ip in network.egress_open_addresses(instance=instance)
