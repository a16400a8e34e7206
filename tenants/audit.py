"""The audit trail: one row per tenant, plan, member or money change, in the caller's transaction."""
from django.db import transaction

from tenants.models import AuditLog


def audit_record(*, tenant, actor, action, target="", data=None):
    """Write an audit row. Must run inside the transaction of the change it records."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("audit_record must run inside the transaction of the change it records")
    return AuditLog.objects.create(
        tenant=tenant,
        tenant_slug=tenant.slug if tenant else "",
        tenant_key=tenant.pk if tenant else None,
        actor=actor if getattr(actor, "pk", None) else None,
        actor_label=_actor_label(actor),
        action=action,
        target=str(target)[:200],
        data=data or {},
    )


def _actor_label(actor):
    if actor is None:
        return "system"
    if isinstance(actor, str):
        return actor
    return getattr(actor, "email", "") or str(actor)
