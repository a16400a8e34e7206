"""Writes of the tenants app: onboarding, users and members, invitations, plans, suspension, offboarding, API
tokens."""
import io
import json
import logging
import os
import secrets
import stat
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.text import slugify

from core.tokens import hash_secret
from tenants import files, offboarding, policy
from tenants.audit import audit_record
from tenants.events import event_emit
from tenants.exceptions import Conflict, Forbidden, NotFound, ServiceError
from tenants.models import AuditLog, Invitation, Membership, Plan, Role, Tenant, TenantExport
from tenants.tokens import API_TOKENS, TOKEN_PREFIX, api_token_authenticate  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)
User = get_user_model()

RESERVED_SLUGS = {"admin", "api", "www", "static", "media", "portal", "accounts", "gateway", "healthz", "readyz",
                  "hearth"}


def tenant_storage_path(slug):
    return Path(settings.STORAGE_ROOT) / "tenants" / slug


# --- onboarding ----------------------------------------------------------------------------------


def _unique_slug(name):
    base = slugify(name)[:40].strip("-") or "tenant"
    if base in RESERVED_SLUGS:
        base = f"{base}-org"
    slug, n = base, 1
    while Tenant.objects.filter(slug=slug).exists():
        n += 1
        slug = f"{base}-{n}"
    return slug


def _plan_by_slug(slug):
    try:
        return Plan.objects.get(slug=slug)
    except Plan.DoesNotExist:
        known = ", ".join(Plan.objects.values_list("slug", flat=True))
        raise ServiceError(f"Unknown plan '{slug}'. Known plans: {known}.", code="unknown_plan", field="plan") from None


def tenant_onboard(*, name, owner, plan="free", slug=None, synthetic=False, actor=None):
    """Create a tenant with `owner` (a User) as its owner, its storage directory, audit row and event.

    Unless staff onboard it (`actor`) or it is synthetic, the owner's tenant limits apply (tenants.policy)."""
    name = (name or "").strip()
    if not name:
        raise ServiceError("A tenant needs a name.", field="name")
    plan_obj = plan if isinstance(plan, Plan) else _plan_by_slug(plan)
    if slug is not None:
        if slug != slugify(slug) or not slug or slug in RESERVED_SLUGS:
            raise ServiceError(f"'{slug}' is not a usable tenant slug: use lower-case letters, digits and dashes.",
                               field="slug")
        if Tenant.objects.filter(slug=slug).exists():
            raise Conflict(f"The tenant slug '{slug}' is taken.", code="duplicate_slug", field="slug")
    try:
        with transaction.atomic():
            if policy.tenant_limits_apply(actor=actor or owner, synthetic=synthetic):
                _owned_limits_check(owner=owner, plan=plan_obj)
            tenant = Tenant.objects.create(
                slug=slug or _unique_slug(name), name=name, plan=plan_obj, synthetic=synthetic
            )
            Membership.objects.create(tenant=tenant, user=owner, role=Role.OWNER)
            audit_record(tenant=tenant, actor=actor or owner, action="tenant.onboarded", target=tenant.slug,
                         data={"plan": plan_obj.slug, "owner": owner.email, "synthetic": synthetic})
            event_emit(type="tenant.onboarded", tenant=tenant,
                       payload={"tenant": tenant.slug, "owner": owner.email, "plan": plan_obj.slug})
    except IntegrityError:
        raise Conflict(f"The tenant slug '{slug or name}' is taken.", code="duplicate_slug", field="slug") from None
    tenant_storage_path(tenant.slug).mkdir(parents=True, exist_ok=True)
    return tenant


def _owned_limits_check(*, owner, plan):
    """The owner's tenant limits, counted under a lock on the owner's row so two sign-ups or creations at once
    cannot both take the last one."""
    if owner.pk is None:
        return
    User.objects.select_for_update().filter(pk=owner.pk).first()
    owned_plans = [m.tenant.plan for m in Membership.objects.filter(user=owner, role=Role.OWNER)
                   .select_related("tenant__plan")]
    policy.tenants_owned_check(plan=plan, owned_plans=owned_plans)


def user_get_or_create(*, email, password=None):
    email = User.objects.normalize_email(email or "").strip().lower()
    if "@" not in email:
        raise ServiceError(f"'{email}' is not an email address.", field="email")
    user = User.objects.filter(email__iexact=email).first()
    if user is None:
        user = User.objects.create_user(email=email, password=password)
        if password is None:
            user.set_unusable_password()
            user.save(update_fields=["password"])
    return user


# --- seats ---------------------------------------------------------------------------------------


def seats_used(tenant):
    pending = Invitation.objects.filter(
        tenant=tenant, accepted_at__isnull=True, revoked_at__isnull=True, expires_at__gt=timezone.now()
    ).count()
    return tenant.memberships.count() + pending


# --- invitations and members ---------------------------------------------------------------------


def member_invite(*, tenant, email, role=Role.MEMBER, actor):
    """Invite an address; returns (invitation, token). The token is shown once and stored hashed."""
    inviter = policy.require_manager(tenant=tenant, actor=actor)
    policy.require_active(tenant)
    email = (email or "").strip().lower()
    if "@" not in email or len(email) > 254:
        raise ServiceError(f"'{email}' is not an email address.", field="email")
    if role not in Role.values:
        raise ServiceError(f"Unknown role '{role}'. Roles: {', '.join(Role.values)}.", field="role")
    policy.require_grant(inviter, role, message="Only owners can invite owners.")
    token = secrets.token_urlsafe(32)
    with transaction.atomic():
        Tenant.objects.select_for_update().get(pk=tenant.pk)  # serialise seat counting per tenant
        if Membership.objects.filter(tenant=tenant, user__email__iexact=email).exists():
            raise Conflict(f"{email} is already a member of {tenant.name}.", code="already_member", field="email")
        open_invitations = Invitation.objects.filter(
            tenant=tenant, email__iexact=email, accepted_at__isnull=True, revoked_at__isnull=True
        )
        if open_invitations.filter(expires_at__gt=timezone.now()).exists():
            raise Conflict(f"{email} already has a pending invitation.", code="already_invited", field="email")
        # An expired invitation still holds the one-open-invitation-per-address constraint: close it.
        open_invitations.update(revoked_at=timezone.now())
        policy.seats_check(tenant=tenant, used=seats_used(tenant))
        invitation = Invitation.objects.create(
            tenant=tenant,
            email=email,
            role=role,
            token_hash=hash_secret(token),
            invited_by=actor if getattr(actor, "pk", None) else None,
            expires_at=timezone.now() + settings.INVITATION_TTL,
        )
        audit_record(tenant=tenant, actor=actor, action="member.invited", target=email, data={"role": role})
        event_emit(type="member.invited", tenant=tenant,
                   payload={"email": email, "role": role, "invitation": invitation.pk})
    return invitation, token


def invitation_revoke(*, invitation, actor):
    policy.require_manager(tenant=invitation.tenant, actor=actor)
    with transaction.atomic():
        invitation = Invitation.objects.select_for_update().get(pk=invitation.pk)
        if not invitation.is_pending:
            raise Conflict("This invitation was already used or revoked.", code="invitation_closed")
        invitation.revoked_at = timezone.now()
        invitation.save(update_fields=["revoked_at"])
        audit_record(tenant=invitation.tenant, actor=actor, action="member.invitation_revoked",
                     target=invitation.email)
    return invitation


def invitation_by_token(token):
    invitation = Invitation.objects.select_related("tenant").filter(token_hash=hash_secret(token or "")).first()
    if invitation is None:
        raise NotFound("This invitation link is not valid.", code="invitation_invalid")
    return invitation


def invitation_accept(*, token, user):
    """Join the inviting tenant. The token is single-use and expires."""
    invitation = invitation_by_token(token)
    with transaction.atomic():
        # Lock order as in member_invite (tenant, then its invitations), which also serialises seat counting.
        tenant = Tenant.objects.select_related("plan").select_for_update(of=("self",)).get(pk=invitation.tenant_id)
        invitation = Invitation.objects.select_for_update().get(pk=invitation.pk)
        if invitation.accepted_at is not None:
            raise Conflict("This invitation has already been used.", code="invitation_used")
        if invitation.revoked_at is not None:
            raise Conflict("This invitation was revoked.", code="invitation_revoked")
        if invitation.expires_at <= timezone.now():
            raise Conflict("This invitation has expired; ask for a new one.", code="invitation_expired")
        if user.email.lower() != invitation.email.lower():
            raise Forbidden(f"This invitation is for {invitation.email}; you are signed in as {user.email}.",
                            code="invitation_other_email")
        policy.require_active(tenant)
        if Membership.objects.filter(tenant=tenant, user=user).exists():
            raise Conflict(f"You are already a member of {tenant.name}.", code="already_member")
        # The plan may have shrunk since the invitation was sent.
        policy.seats_check(tenant=tenant, used=tenant.memberships.count())
        membership = Membership.objects.create(tenant=tenant, user=user, role=invitation.role)
        invitation.accepted_at = timezone.now()
        invitation.accepted_by = user
        invitation.save(update_fields=["accepted_at", "accepted_by"])
        audit_record(tenant=tenant, actor=user, action="member.joined", target=user.email,
                     data={"role": invitation.role, "invitation": invitation.pk})
        event_emit(type="member.joined", tenant=tenant, payload={"email": user.email, "role": invitation.role})
    return membership


def invitation_url(token, *, base_url=None):
    """The page where an invitee accepts (served by the portal)."""
    return f"{(base_url or settings.HEARTH_BASE_URL).rstrip('/')}/invitations/{token}/"


def invitation_send_mail(*, invitation, token, base_url=None):
    """Mail the invitation link to the invitee. Call after `member_invite` has committed.

    Returns False (and logs) if the mail server refused: the invitation stands and can be revoked and re-sent.
    """
    context = {"invitation": invitation, "tenant": invitation.tenant, "inviter": invitation.invited_by,
               "accept_url": invitation_url(token, base_url=base_url)}
    subject = render_to_string("tenants/email/invitation_subject.txt", context).strip()
    body = render_to_string("tenants/email/invitation_message.txt", context)
    try:
        send_mail(subject, body, None, [invitation.email])
    except Exception:  # SMTP failures come in many types; the invitation itself is already stored
        log.exception("could not mail invitation %s to %s", invitation.pk, invitation.email)
        return False
    return True


def _lock_memberships(tenant):
    return list(Membership.objects.filter(tenant=tenant).order_by("pk").select_for_update())


def _recheck_acting(acting, locked):
    """The actor's role as it is under the lock: a concurrent change may have demoted or removed them."""
    if acting is None:
        return None
    current = locked.get(acting.pk)
    if not policy.can_manage_members(current):
        raise Forbidden(policy.MANAGE_MEMBERS)
    return current


def _owners(locked):
    return sum(policy.is_owner(m) for m in locked.values())


def member_set_role(*, membership, role, actor):
    tenant = membership.tenant
    acting = policy.require_manager(tenant=tenant, actor=actor)
    if role not in Role.values:
        raise ServiceError(f"Unknown role '{role}'. Roles: {', '.join(Role.values)}.", field="role")
    with transaction.atomic():
        locked = {m.pk: m for m in _lock_memberships(tenant)}
        acting = _recheck_acting(acting, locked)
        target = locked.get(membership.pk)
        if target is None:
            raise NotFound("No such member.")
        policy.require_grant(acting, role, target.role)
        if target.role == role:
            return target
        policy.last_owner_check(target, owners=_owners(locked))
        old = target.role
        target.role = role
        target.save(update_fields=["role"])
        audit_record(tenant=tenant, actor=actor, action="member.role_changed", target=target.user.email,
                     data={"from": old, "to": role})
    return target


def member_remove(*, membership, actor):
    tenant = membership.tenant
    leaving_self = getattr(actor, "pk", None) == membership.user_id
    acting = None if leaving_self else policy.require_manager(tenant=tenant, actor=actor)
    with transaction.atomic():
        locked = {m.pk: m for m in _lock_memberships(tenant)}
        acting = _recheck_acting(acting, locked)
        target = locked.get(membership.pk)
        if target is None:
            raise NotFound("No such member.")
        policy.require_grant(acting, target.role, message="Only owners can remove owners.")
        _member_delete(tenant=tenant, target=target, locked=locked, actor=actor)


def member_deprovision(*, membership, actor):
    """The tenant's identity provider removes a member (SCIM: a user deactivated or deleted in its directory). The
    authority is the directory's token, checked by its caller; the rest is member_remove's: in the caller's
    transaction, with the same audit row, API tokens and portal sessions, and the same hooks after commit."""
    tenant = membership.tenant
    with transaction.atomic():
        locked = {m.pk: m for m in _lock_memberships(tenant)}
        target = locked.get(membership.pk)
        if target is None:
            raise NotFound("No such member.")
        _member_delete(tenant=tenant, target=target, locked=locked, actor=actor)


def _member_delete(*, tenant, target, locked, actor):
    """Delete a membership (its memberships locked in `locked`): its API tokens go with it (on_delete CASCADE: the
    next request with one is refused), the user's portal sessions stop acting in the tenant (at their next request:
    tenants.portal.portal_session_check), and after commit what they run there ends (offboarding's access-lost
    hooks: workspace sessions and their gateway routes)."""
    policy.last_owner_check(target, owners=_owners(locked),
                            message="The last owner cannot be removed: make someone else an owner first.")
    user, email = target.user, target.user.email
    tokens = target.api_tokens.filter(revoked_at__isnull=True).count()
    target.delete()
    audit_record(tenant=tenant, actor=actor, action="member.removed", target=email,
                 data={"role": target.role, "api_tokens_revoked": tokens})
    event_emit(type="member.removed", tenant=tenant, payload={"email": email, "user": user.pk})
    # At once, not on the next reclaim tick: the gateway lets the session's token in as long as its route lives.
    transaction.on_commit(lambda: offboarding.run_access_lost_hooks(user=user, tenant=tenant, actor=actor))


def _audit_user_change(*, user, actor, action, data=None):
    """One audit row in each of the user's tenants (their trails show it), or one without a tenant."""
    tenants = [m.tenant for m in Membership.objects.filter(user=user).select_related("tenant").order_by("pk")]
    for tenant in tenants or [None]:
        audit_record(tenant=tenant, actor=actor, action=action, target=user.email, data=data)


def user_deactivate(*, user, actor):
    """Deactivate a user: no more log-ins, and their running workspaces end (metered to now) at once."""
    with transaction.atomic():
        user = User.objects.select_for_update().get(pk=user.pk)
        if not user.is_active:
            return user
        user.is_active = False
        user.save(update_fields=["is_active"])
        _audit_user_change(user=user, actor=actor, action="user.deactivated")
        transaction.on_commit(lambda: offboarding.run_access_lost_hooks(user=user, tenant=None, actor=actor))
    return user


def user_delete(*, user, actor):
    """Delete a user: end their sessions (metered to now), delete their workspaces' files, then the user.

    Their files are deleted, not archived: a user's deletion is an erasure, and a tenant that wants its data keeps
    it by offboarding. Money records stay: usage events and audit rows keep the user's id and label, not a key.
    The user is deactivated first so that nothing new opens while their sessions end.
    """
    user = user_deactivate(user=user, actor=actor)
    offboarding.run_user_delete_hooks(user=user, actor=actor)
    with transaction.atomic():
        user = User.objects.select_for_update().get(pk=user.pk)
        _audit_user_change(user=user, actor=actor, action="user.deleted", data={"user": user.pk})
        user.delete()
    return user


# --- plan and status -----------------------------------------------------------------------------


def _lock_live_tenant(tenant):
    """The tenant's row, locked for the caller's transaction; an offboarded tenant cannot change."""
    tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
    policy.require_not_offboarded(tenant)
    return tenant


# The audit trail's actor when a plan or status follows the state of a Stripe subscription (billing.subscriptions).
BILLING_ACTOR = "stripe"


@dataclass
class PlanRequest:
    """What an owner's choice of plan did: `checkout` (pay at `checkout_url`; the plan is unchanged until Stripe
    reports the subscription active), `changed`, `scheduled` (at the period's end) or `unchanged`."""

    outcome: str
    tenant: Tenant
    checkout_url: str | None = None


_plan_request_handler = None


def plan_request_handler(handler):
    """billing registers here what choosing a plan does (checkout, subscription changes): tenants does not import
    billing (dependencies point one way), and without billing no plan can be bought."""
    global _plan_request_handler
    _plan_request_handler = handler
    return handler


def tenant_request_plan(*, tenant, plan, actor, return_url):
    """An owner chooses a public plan: a paid one starts only when it is paid (billing decides how). Returns the
    PlanRequest; the portal, the sign-up and POST /api/v1/tenant/plan all come here."""
    policy.require_owner(tenant=tenant, actor=actor, message="Only the tenant's owners can change its plan.")
    plan_obj = plan if isinstance(plan, Plan) else _plan_by_slug(plan)
    policy.require_offered(plan_obj)
    tenant = Tenant.objects.select_related("plan", "pending_plan").get(pk=tenant.pk)
    policy.require_not_offboarded(tenant)
    if _plan_request_handler is None:
        raise ServiceError("Plans cannot be changed here: billing is not installed.", code="billing_unavailable")
    return _plan_request_handler(tenant=tenant, plan=plan_obj, actor=actor, return_url=return_url)


def tenant_change_plan(*, tenant, plan, actor):
    """Set the plan directly, with no payment: staff in the control plane (any plan, enterprise too), and billing
    when a subscription's state says so (actor BILLING_ACTOR; the seats were checked when the change was asked
    for). Owners choose plans with tenant_request_plan."""
    from_billing = actor == BILLING_ACTOR
    if not from_billing:
        policy.actor_membership(tenant=tenant, actor=actor)
        if not getattr(actor, "is_staff", False):
            raise Forbidden("A plan is chosen on the plans page (or POST /api/v1/tenant/plan), which asks for "
                            "payment; only Hearth's staff set plans directly.", code="staff_only")
    plan_obj = plan if isinstance(plan, Plan) else _plan_by_slug(plan)
    with transaction.atomic():
        tenant = _lock_live_tenant(tenant)
        if tenant.plan_id == plan_obj.pk:
            return tenant
        if not from_billing:
            policy.plan_seats_check(tenant=tenant, plan=plan_obj, members=tenant.memberships.count())
        old = tenant.plan
        tenant.plan = plan_obj
        tenant.save(update_fields=["plan"])
        audit_record(tenant=tenant, actor=actor, action="tenant.plan_changed", target=tenant.slug,
                     data={"from": old.slug, "to": plan_obj.slug})
        event_emit(type="tenant.plan_changed", tenant=tenant, payload={"from": old.slug, "to": plan_obj.slug})
    return tenant


def tenant_rename(*, tenant, name, actor):
    """Change the display name (owners and admins). The slug never changes: URLs and storage use it."""
    policy.require_manager(tenant=tenant, actor=actor, message=policy.MANAGERS_ONLY)
    name = (name or "").strip()
    if not name:
        raise ServiceError("A tenant needs a name.", field="name")
    if len(name) > Tenant._meta.get_field("name").max_length:
        raise ServiceError("The name is too long (120 characters at most).", field="name")
    with transaction.atomic():
        tenant = _lock_live_tenant(tenant)
        if tenant.name == name:
            return tenant
        old = tenant.name
        tenant.name = name
        tenant.save(update_fields=["name"])
        audit_record(tenant=tenant, actor=actor, action="tenant.renamed", target=tenant.slug,
                     data={"from": old, "to": name})
    return tenant


def _set_status(*, tenant, status, actor, action, reason=""):
    with transaction.atomic():
        tenant = _lock_live_tenant(tenant)
        if tenant.status == status:
            return tenant
        old = tenant.status
        tenant.status = status
        tenant.save(update_fields=["status"])
        audit_record(tenant=tenant, actor=actor, action=action, target=tenant.slug,
                     data={"from": old, "to": status, "reason": reason})
        event_emit(type=action, tenant=tenant, payload={"reason": reason})
    return tenant


def tenant_suspend(*, tenant, actor, reason=""):
    """Suspend: members can still log in and read, but no workspace opens and running sessions end."""
    tenant = _set_status(tenant=tenant, status=Tenant.Status.SUSPENDED, actor=actor, action="tenant.suspended",
                         reason=reason)
    offboarding.run_suspend_hooks(tenant)
    return tenant


def tenant_resume(*, tenant, actor):
    return _set_status(tenant=tenant, status=Tenant.Status.ACTIVE, actor=actor, action="tenant.resumed")


def tenant_offboard(*, tenant, actor):
    """Export the tenant's data to an archive its owners can download, then delete the tenant.

    The audit trail stays (its rows keep the tenant's slug). Returns the TenantExport.
    """
    policy.require_owner(tenant=tenant, actor=actor)
    tenant = _set_status(tenant=tenant, status=Tenant.Status.SUSPENDED, actor=actor, action="tenant.suspended",
                         reason="offboarding")
    offboarding.run_suspend_hooks(tenant)
    owners = [m.user for m in tenant.memberships.select_related("user").filter(role=Role.OWNER)]
    archive = _export_archive(tenant)
    with transaction.atomic():
        export = TenantExport.objects.create(tenant_slug=tenant.slug, path=str(archive),
                                             size_bytes=archive.stat().st_size)
        export.owners.set(owners)
        audit_record(tenant=tenant, actor=actor, action="tenant.offboarded", target=tenant.slug,
                     data={"export": export.pk, "bytes": export.size_bytes})
        event_emit(type="tenant.offboarded", tenant=None, payload={"tenant": tenant.slug, "export": export.pk})
        offboarding.run_teardown_hooks(tenant)
        tenant.delete()
    _storage_remove(tenant_storage_path(tenant.slug))
    return export


def _export_archive(tenant):
    """A .tar.gz with the tenant's records as JSON and its storage directory."""
    export_root = Path(settings.EXPORT_ROOT)
    export_root.mkdir(parents=True, exist_ok=True)
    path = export_root / f"{tenant.slug}-{timezone.now():%Y%m%dT%H%M%S}-{secrets.token_hex(4)}.tar.gz"
    records = {
        "tenant": {"slug": tenant.slug, "name": tenant.name, "plan": tenant.plan.slug,
                   "created_at": tenant.created_at.isoformat(), "synthetic": tenant.synthetic},
        "members": [{"email": m.user.email, "role": m.role, "since": m.created_at.isoformat()}
                    for m in tenant.memberships.select_related("user")],
        "invitations": [{"email": i.email, "role": i.role, "created_at": i.created_at.isoformat(),
                         "accepted_at": i.accepted_at.isoformat() if i.accepted_at else None}
                        for i in tenant.invitations.all()],
        "audit_log": [{"at": a.created_at.isoformat(), "actor": a.actor_label, "action": a.action,
                       "target": a.target, "data": a.data}
                      for a in AuditLog.objects.filter(tenant=tenant).order_by("created_at", "pk")],
        **offboarding.run_exporters(tenant),
    }
    tmp = path.with_suffix(".part")
    with tarfile.open(tmp, "w:gz") as tar:
        data = json.dumps(records, indent=2, default=str).encode()
        info = tarfile.TarInfo(f"{tenant.slug}/tenant.json")
        info.size = len(data)
        info.mtime = int(timezone.now().timestamp())
        tar.addfile(info, io.BytesIO(data))
        storage = tenant_storage_path(tenant.slug)
        if storage.exists():
            _archive_tree(tar, storage, arcname=f"{tenant.slug}/storage")
    tmp.rename(path)
    return path


def _archive_tree(tar, root, *, arcname):
    """Add `root` to `tar` as tar.add would, at any depth and path length (tarfile.add recurses per level and
    opens by full path), without following symlinks: directories, regular files and symlinks; FIFOs, sockets and
    devices are left out. Files are read through the walk's directory descriptor."""
    info = tar.gettarinfo(str(root), arcname=arcname)
    tar.addfile(info)
    for entry in files.tree_walk(root):
        st = entry.stat
        info = tarfile.TarInfo(f"{arcname}/{entry.path}")
        info.mode, info.uid, info.gid, info.mtime = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime)
        if entry.is_dir():
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        elif stat.S_ISLNK(st.st_mode):
            info.type, info.linkname = tarfile.SYMTYPE, os.readlink(entry.name, dir_fd=entry.dir_fd)
            tar.addfile(info)
        elif entry.is_file():
            try:
                fd = os.open(entry.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=entry.dir_fd)
            except FileNotFoundError:
                continue  # removed since the walk saw it
            with os.fdopen(fd, "rb") as fileobj:
                info.size = os.fstat(fd).st_size
                tar.addfile(info, fileobj)


def _storage_remove(path):
    """Delete a tenant's storage directory at any depth (shutil.rmtree recurses per level), never following a
    symlink or leaving the file system. GNU rm walks with openat and handles any depth and path length."""
    result = subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        log.warning("could not delete %s entirely: %s", path, result.stderr.strip()[-500:])


# --- API tokens (the shared implementation and the lookup: core.tokens, tenants.tokens) ------------------------


def api_token_create(*, membership, name, actor, sso_login_at=None):
    """Create a personal token for one membership; returns (ApiToken, plaintext shown once). `sso_login_at`: when
    the creating session signed in through the tenant's identity provider (tenants.policy.api_token_sso_check)."""
    if getattr(actor, "pk", None) != membership.user_id and not getattr(actor, "is_staff", False):
        raise Forbidden("A personal API token can only be created by its owner.")
    name = (name or "").strip()[:80] or "API token"
    data = {"name": name, **({"sso_login_at": sso_login_at.isoformat()} if sso_login_at else {})}
    return API_TOKENS.create(tenant=membership.tenant, actor=actor, membership=membership, name=name,
                             sso_login_at=sso_login_at, target=lambda token: f"{membership.user.email}:{token.prefix}",
                             data=data)


def api_token_revoke(*, token, actor):
    membership = token.membership
    if getattr(actor, "pk", None) != membership.user_id:
        policy.require_manager(tenant=membership.tenant, actor=actor)
    return API_TOKENS.revoke(token=token, tenant=membership.tenant, actor=actor,
                             target=lambda token: f"{membership.user.email}:{token.prefix}")
