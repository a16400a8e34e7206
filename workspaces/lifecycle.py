"""A workspace's own life: its creation (with its storage directory), its deletion (its sessions and files), what
its owner's deletion takes with it, and its part of a tenant's export and offboarding (its users' volumes)."""
import logging
import os
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from tenants import offboarding, policy
from tenants.audit import audit_record
from tenants.exceptions import Conflict, NotFound, ServiceError
from workspaces import selectors, sessions, storage
from workspaces.models import Session, Workspace, WorkspaceTemplate

log = logging.getLogger(__name__)


def workspace_create(*, tenant, owner, name, template, actor=None):
    """Create a workspace for `owner` from a template slug (or object); its storage directory is made now."""
    actor = actor or owner
    selectors.membership_of(tenant=tenant, user=owner)
    name = (name or "").strip()
    if not name or len(name) > 80:
        raise ServiceError("A workspace needs a name of 1 to 80 characters.", field="name")
    if isinstance(template, WorkspaceTemplate):
        template_obj = template
    else:
        template_obj = WorkspaceTemplate.objects.filter(slug=str(template or "")).first()
        if template_obj is None:
            known = ", ".join(WorkspaceTemplate.objects.filter(enabled=True).values_list("slug", flat=True))
            raise ServiceError(f"Unknown template '{template}'. Templates: {known}.", code="unknown_template",
                               field="template")
    if not template_obj.enabled:
        raise ServiceError(f"The template '{template_obj.slug}' is disabled.", code="template_disabled",
                           field="template")
    policy.require_active(tenant)
    try:
        with transaction.atomic():
            workspace = Workspace.objects.create(tenant=tenant, owner=owner, template=template_obj, name=name)
            workspace.storage_path = str(storage.user_storage_path(
                tenant_slug=tenant.slug, user_id=owner.pk, workspace_id=workspace.pk))
            workspace.save(update_fields=["storage_path"])
            audit_record(tenant=tenant, actor=actor, action="workspace.created", target=f"workspace:{workspace.pk}",
                         data={"name": name, "template": template_obj.slug, "owner": owner.email})
    except IntegrityError:
        raise Conflict(f"You already have a workspace named '{name}'.", code="duplicate_name", field="name")
    return workspace


def workspace_delete(*, workspace, actor, confirm):
    """Delete a workspace and its files. `confirm` must repeat the workspace's name."""
    membership = selectors.membership_of(tenant=workspace.tenant, user=actor)
    if not policy.can_manage_workspace(membership, workspace):
        raise NotFound("No such workspace.")
    if (confirm or "").strip() != workspace.name:
        raise ServiceError(f"To delete '{workspace.name}' and all its files, confirm with its name.",
                           code="confirmation_required", field="confirm")
    with transaction.atomic():
        workspace = Workspace.objects.select_for_update().get(pk=workspace.pk)
        if workspace.deleted_at is not None:
            raise NotFound("No such workspace.")
        workspace.deleted_at = timezone.now()
        workspace.save(update_fields=["deleted_at"])
        audit_record(tenant=workspace.tenant, actor=actor, action="workspace.deleted",
                     target=f"workspace:{workspace.pk}", data={"name": workspace.name})
    # Deleted first, sessions ended second: an open that comes later is refused, so none can start between the two.
    # (One that passed its checks just before the delete and claims after it is ended by the next reconcile.)
    for session in Session.objects.filter(workspace=workspace, ended_at__isnull=True):
        sessions.session_end(session=session, reason=Session.EndReason.DELETED, actor=actor)
    if workspace.storage_path:
        try:
            # Not shutil.rmtree: at any depth the user made, never following their symlinks.
            storage.remove_tree(workspace.storage_path)
        except (OSError, storage.StorageError) as exc:
            log.warning("deleting the files of %s failed: %s", workspace, exc)
    return workspace


@offboarding.on_teardown
def _volumes_release(tenant):
    """Unmount the tenant's users' volumes (the files are already exported); their images go once it commits."""
    storage.user_volumes_release(tenant_dir=Path(settings.STORAGE_ROOT) / "tenants" / tenant.slug)
    images = Path(settings.STORAGE_ROOT) / "volumes" / tenant.slug
    transaction.on_commit(lambda: storage.remove_tree(images))


@offboarding.on_user_delete
def _delete_owned_on_user_delete(*, user, actor):
    """End the user's sessions (metered to now) and delete the files of every workspace they own, in every tenant;
    the rows go with the user's cascade."""
    sessions.sessions_end_for_user(user=user, actor=actor)
    trees, user_dirs = [], []
    for workspace in Workspace.objects.filter(owner=user).select_related("tenant"):
        with transaction.atomic():
            audit_record(tenant=workspace.tenant, actor=actor, action="workspace.deleted",
                         target=f"workspace:{workspace.pk}", data={"name": workspace.name, "reason": "owner deleted"})
        if workspace.storage_path:
            trees.append(workspace.storage_path)
            user_dirs.append(os.path.dirname(workspace.storage_path))
    for path in trees:
        try:
            storage.remove_tree(path)
        except (OSError, storage.StorageError) as exc:
            log.warning("deleting %s of deleted user %s failed: %s", path, user.pk, exc)
    for user_dir in dict.fromkeys(user_dirs):  # the user's directory in each tenant, with its volume image
        try:
            storage.user_volume_delete(user_dir=user_dir)
        except (OSError, storage.StorageError) as exc:
            log.warning("deleting %s of deleted user %s failed: %s", user_dir, user.pk, exc)


@offboarding.exporter("workspaces")
def _export(tenant):
    return [
        {"name": w.name, "template": w.template.slug, "owner": w.owner.email, "created_at": w.created_at.isoformat(),
         "deleted_at": w.deleted_at.isoformat() if w.deleted_at else None,
         "sessions": [{"started_at": s.started_at.isoformat(),
                       "ended_at": s.ended_at.isoformat() if s.ended_at else None,
                       "end_reason": s.end_reason} for s in w.sessions.order_by("started_at")]}
        for w in Workspace.objects.filter(tenant=tenant).select_related("template", "owner")
    ]
