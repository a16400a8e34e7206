"""Disk limits at write time (storage.user_volume_ensure): each user's directory is an ext4 image of the plan's
storage_mb on a loop device, mounted at the open. Real Docker, real loop devices, the tiny image."""
import os
from pathlib import Path

import pytest

from tests.workspaces.fixtures_pool import *  # noqa: F403
from tests.workspaces.fixtures_runtime import docker_exec
from workspaces import services, storage
from workspaces.models import Container
from workspaces.runtime import runtime_for

pytestmark = [pytest.mark.django_db, pytest.mark.docker]


def _tenant_member(plan_slug):
    from tenants.models import Plan
    from tests.factories import MembershipFactory, TenantFactory

    return MembershipFactory(tenant=TenantFactory(plan=Plan.objects.get(slug=plan_slug)))


def _open(membership, workspace):
    session = services.workspace_open(workspace=workspace, user=membership.user).session
    return session, Container.objects.select_related("node").get(pk=session.container_id)


def _sh(container, script):
    return docker_exec(runtime_for(container.node), container.engine_id, "sh", "-c", script, timeout=120)


def test_writing_past_the_free_plans_100_mb_fails_inside_and_another_tenant_still_writes(node, tiny_template,
                                                                                          make_workspace):
    from metering import services as metering_services

    a, b = _tenant_member("free"), _tenant_member("free")
    wa = make_workspace(a, "a")
    _, ca = _open(a, wa)
    _, cb = _open(b, make_workspace(b, "b"))
    code, out = _sh(ca, "dd if=/dev/zero of=/home/coder/big bs=1M count=150 2>&1")
    assert code != 0 and "No space left on device" in out, out
    written = (Path(wa.storage_path) / "big").stat().st_size
    assert 80 * 2**20 < written <= 100 * 2**20
    image = storage.volume_image_path(Path(wa.storage_path).parent)
    assert image.stat().st_blocks * 512 <= 101 * 2**20  # the host holds no more than the plan allows
    code, out = _sh(cb, "dd if=/dev/zero of=/home/coder/ten bs=1M count=10 2>&1 && echo ok")
    assert code == 0 and out.strip().endswith("ok"), out
    # The tenant's storage sample reads what is really there.
    assert written <= metering_services.storage_sample(tenant=a.tenant) <= 101 * 2**20


def test_a_raised_limit_applies_at_the_next_open_and_files_written_before_the_volume_move_in(node, tiny_template,
                                                                                             make_workspace):
    from tenants.models import Plan

    m = _tenant_member("free")
    workspace = make_workspace(m, "w")
    home = Path(workspace.storage_path)
    home.mkdir(parents=True)
    (home / "notes.txt").write_text("from before the quota")
    os.chown(home / "notes.txt", storage.WORKSPACE_UID, storage.WORKSPACE_GID)
    session, container = _open(m, workspace)
    code, out = _sh(container, "cat /home/coder/notes.txt; echo; dd if=/dev/zero of=/home/coder/f1 bs=1M count=70 "
                               "2>/dev/null && echo ok")
    assert code == 0 and out.split("\n")[0] == "from before the quota" and "ok" in out, out
    assert storage.is_mount_point(home.parent)
    services.session_close(session=session, actor=m.user)
    Plan.objects.filter(slug="free").update(storage_mb=200)
    m.tenant.plan.refresh_from_db()
    _, container = _open(m, workspace)
    code, out = _sh(container, "dd if=/dev/zero of=/home/coder/f2 bs=1M count=70 2>&1 && echo ok")
    assert code == 0 and out.strip().endswith("ok"), out
    code, out = _sh(container, "df -k /home/coder | tail -1")
    assert 180_000 < int(out.split()[1]) <= 205_000, out


def test_inodes_are_bounded_too(node, tiny_template, make_workspace):
    """50 M empty files exhausted the host's inodes before; a volume has one inode per 8 KiB (12,800 for 100 MB)."""
    import errno

    a, b = _tenant_member("free"), _tenant_member("free")
    wa = make_workspace(a, "a")
    _open(a, wa)
    _, cb = _open(b, make_workspace(b, "b"))
    home = Path(wa.storage_path)
    made = 0
    with pytest.raises(OSError) as full:
        while made < 100_000:
            os.close(os.open(home / f"f{made}", os.O_CREAT | os.O_WRONLY, 0o644))
            made += 1
    assert full.value.errno == errno.ENOSPC
    assert 12_000 < made < 12_800
    code, out = _sh(cb, "touch /home/coder/still-room && echo ok")
    assert code == 0 and out.strip() == "ok", out
