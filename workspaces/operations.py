"""What operators do from admin: drain and undrain a node, pause and resume a template's pool."""
import logging

from django.db import transaction
from django.utils import timezone

from workspaces import sessions
from workspaces.models import Container, Node, Session, WorkspaceTemplate
from workspaces.pool import provisioning, refill

log = logging.getLogger(__name__)

State = Container.State


def node_drain(*, node, actor):
    """Stop placing on `node`, end its sessions (reason `drained`) and remove its warm containers."""
    with transaction.atomic():
        node = Node.objects.select_for_update().get(pk=node.pk)
        node.draining = True
        node.save(update_fields=["draining"])
    for session in Session.objects.filter(container__node=node, ended_at__isnull=True):
        sessions.session_end(session=session, reason=Session.EndReason.DRAINED, actor=actor)
    warm = list(Container.objects.filter(node=node, state=State.WARM).select_related("node", "template"))
    for container in warm:
        if Container.objects.filter(pk=container.pk, state=State.WARM).update(
                state=State.RELEASING, released_at=timezone.now()):
            provisioning.container_release(container)
    for template_id in {c.template_id for c in warm}:
        with transaction.atomic():
            refill.pool_fill_enqueue(template_id)
    log.info("node %s drained by %s", node.name, actor)
    return node


def node_undrain(*, node, actor):
    Node.objects.filter(pk=node.pk).update(draining=False)
    node.draining = False
    with transaction.atomic():
        refill.pool_fill_enqueue(None)
    return node


def pool_pause(*, template, paused, actor):
    """Pause (no claims, no refills) or resume a template's pool."""
    WorkspaceTemplate.objects.filter(pk=template.pk).update(pool_paused=paused)
    template.pool_paused = paused
    log.info("pool %s %s by %s", template.slug, "paused" if paused else "resumed", actor)
    if not paused:
        with transaction.atomic():
            refill.pool_fill_enqueue(template.pk)
    return template
