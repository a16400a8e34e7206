"""Workspaces: templates, users' workspaces, Docker nodes, pool containers and the sessions that hold them."""
import secrets
import string
import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

from tenants.models import Tenant

HOST_KEY_ALPHABET = string.ascii_lowercase + string.digits


def host_key_new():
    """A random lower-case DNS label starting with a letter (12 chars, ~61 bits)."""
    return secrets.choice(string.ascii_lowercase) + "".join(secrets.choice(HOST_KEY_ALPHABET) for _ in range(11))


class WorkspaceTemplate(models.Model):
    """What a workspace runs: an image, its port and resources, and the warm pool kept for it."""

    slug = models.SlugField(unique=True, max_length=40)
    name = models.CharField(max_length=80)
    description = models.CharField(max_length=240, blank=True)
    image = models.CharField(max_length=200)
    internal_port = models.PositiveIntegerField(default=8080)
    cpus = models.DecimalField(max_digits=5, decimal_places=2, default=1)
    memory_mb = models.PositiveIntegerField(default=1024)
    pids_limit = models.PositiveIntegerField(default=256)
    idle_timeout_minutes = models.PositiveIntegerField(default=30)
    # The warm pool follows demand between these bounds (workspaces.pool.demand; docs/POOL.md).
    warm_min = models.PositiveSmallIntegerField(
        default=2, verbose_name="warm minimum", help_text="WARM containers kept per node, whatever the demand.")
    warm_max = models.PositiveSmallIntegerField(
        default=10, verbose_name="warm maximum", help_text="WARM containers per node at most, whatever the demand.")
    max_containers = models.PositiveIntegerField(default=50, help_text="All containers of this template, all nodes.")
    environment = models.JSONField(default=dict, blank=True, help_text="Extra environment variables (str → str).")
    enabled = models.BooleanField(default=True)
    pool_paused = models.BooleanField(default=False, help_text="No claims and no refills while paused.")
    # The pool tick's last decision (pool_fill): what admin shows, and the target the refill rechecks under its lock.
    pool_target = models.PositiveSmallIntegerField(
        null=True, blank=True, editable=False, help_text="WARM containers wanted per node now (the demand rule's).")
    pool_reason = models.CharField(max_length=300, blank=True, editable=False)
    pool_decided_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Since when the pool has held more than the target (a shrink waits WORKSPACES_POOL_SHRINK_HOLD); None: not above.
    pool_above_since = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self):
        return self.slug

    def clean(self):
        errors = {}
        if self.warm_min is not None and self.warm_max is not None and self.warm_min > self.warm_max:
            errors["warm_max"] = "The warm maximum must be at least the minimum."
        elif self.warm_max is not None and self.max_containers is not None and self.warm_max > self.max_containers:
            errors["warm_max"] = "The warm maximum cannot exceed the template's max containers."
        if errors:
            raise ValidationError(errors)

    def warm_target_now(self):
        """WARM containers wanted per node: the last decision, held within the bounds as they are now (staff may
        have changed them since); the minimum before the first decision."""
        target = self.warm_min if self.pool_target is None else self.pool_target
        return max(self.warm_min, min(self.warm_max, target))


class Workspace(models.Model):
    """A user's persistent project: its files live on the host and are bound into a container per session."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="workspaces")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="workspaces")
    template = models.ForeignKey(WorkspaceTemplate, on_delete=models.PROTECT, related_name="workspaces")
    name = models.CharField(max_length=80)
    # The gateway host is <host_key>.<GATEWAY_HOST>; stable for the workspace's life.
    host_key = models.CharField(max_length=63, unique=True, default=host_key_new)
    storage_path = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "owner", "name"],
                condition=models.Q(deleted_at__isnull=True),
                name="workspace_unique_name_per_owner",
            )
        ]
        indexes = [models.Index(fields=["tenant", "owner"], name="workspace_tenant_owner_idx")]

    def __str__(self):
        return f"{self.name} ({self.tenant_id}/{self.owner_id})"


class Node(models.Model):
    """One Docker engine that runs workspace containers."""

    name = models.SlugField(unique=True, max_length=60)
    engine_url = models.CharField(max_length=300, help_text="unix:///var/run/docker.sock or tcp://host:2376")
    cpus = models.DecimalField(max_digits=6, decimal_places=2, default=2)
    memory_mb = models.PositiveIntegerField(default=4096)
    max_containers = models.PositiveIntegerField(default=40)
    enabled = models.BooleanField(default=True)
    draining = models.BooleanField(default=False, help_text="No new containers; running sessions were ended.")
    # Health (workspaces.pool.health has the rule): the last answer from the engine and the failed calls since.
    last_seen_at = models.DateTimeField(null=True, blank=True, help_text="The engine's last answer (heartbeat).")
    failed_calls = models.PositiveIntegerField(
        default=0, help_text="Calls to the engine that failed in a row since its last answer.")
    # The engine's time (ns) of the newest event the follower handled: it asks for events since then on reconnect.
    events_cursor_ns = models.BigIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class Container(models.Model):
    """A pool member. Rows are kept after removal (state REMOVED) so sessions keep their history."""

    class State(models.TextChoices):
        PROVISIONING = "provisioning"
        WARM = "warm"
        CLAIMED = "claimed"
        RELEASING = "releasing"
        REMOVED = "removed"
        FAILED = "failed"
        LOST = "lost"

    # States that hold (or may hold) an engine container and count against capacity.
    ACTIVE_STATES = (State.PROVISIONING, State.WARM, State.CLAIMED, State.RELEASING)

    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="containers")
    template = models.ForeignKey(WorkspaceTemplate, on_delete=models.PROTECT, related_name="containers")
    state = models.CharField(max_length=16, choices=State.choices, default=State.PROVISIONING)
    engine_id = models.CharField(max_length=80, blank=True)
    name = models.CharField(max_length=120, blank=True)
    address = models.CharField(max_length=80, blank=True, help_text="ip:port reachable from the host.")
    slot_path = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    released_at = models.DateTimeField(null=True, blank=True)
    removed_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    last_error = models.TextField(blank=True)
    # Its own egress counter (runtime.egress_counter) when it was ready: what it sent until then (starting, warming
    # up) is nobody's. Read off the request path, where the provisioning finishes; a claim makes it the session's
    # first mark (workspaces.egress.initial_marks). None: not read (a remote engine), so its session counts from 0.
    egress_baseline_bytes = models.BigIntegerField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-pk"]
        indexes = [
            # The claim query: the oldest WARM container of a template.
            models.Index(
                fields=["template", "id"], condition=models.Q(state="warm"), name="container_warm_idx"
            ),
            models.Index(fields=["node", "template", "state"], name="container_pool_idx"),
            models.Index(fields=["state", "created_at"], name="container_state_age_idx"),
        ]

    def __str__(self):
        return self.name or f"container {self.pk}"


class Session(models.Model):
    """A user attached to a container for one workspace; ends on close, idle, suspension, drain or loss."""

    class EndReason(models.TextChoices):
        CLOSED = "closed"
        IDLE = "idle"
        SUSPENDED = "suspended"
        DRAINED = "drained"
        LOST = "lost"
        DELETED = "deleted"
        QUOTA = "quota"
        FAILED = "failed"
        MAX_LENGTH = "max_length"  # the plan's longest session (Plan.max_session_hours)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="workspace_sessions")
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="sessions")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="workspace_sessions")
    # None while the session is `starting`: a worker starts its container (workspaces.opening.session_start).
    container = models.ForeignKey(Container, on_delete=models.PROTECT, related_name="sessions", null=True, blank=True)
    # False: served from the warm pool (a hit); True: the pool was empty and a container was started for it.
    cold_start = models.BooleanField(default=False)
    started_at = models.DateTimeField()
    last_activity_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=16, choices=EndReason.choices, blank=True)
    metered_until = models.DateTimeField(null=True, blank=True, help_text="Usage recorded up to here.")
    # db_default too: a row inserted outside the ORM still starts at 0.
    egress_bytes_metered = models.BigIntegerField(
        default=0, db_default=0, help_text="Egress bytes metered for this session, from every source.")
    # {source: counter value metered so far}: "log" (bytes the gateway sent to the client, from its egress log;
    # "gw:<HAProxy generation>" in sessions metered before it), "if:<container>" (what the container sent out
    # itself). Each only grows; a lower reading is stale, never a reset.
    egress_marks = models.JSONField(default=dict, db_default={}, blank=True)
    client_bytes_seen = models.BigIntegerField(
        default=0, db_default=0, help_text="Bytes the browser had sent through the gateway at the last reclaim tick.")
    # What the user waited (the business dashboards' and the pool page's open latency): from the open's start to its
    # container claimed (warm or cold), or for a `starting` session from the open to the container attached, in a
    # worker. None: opened before it was recorded.
    open_ms = models.PositiveIntegerField(null=True, blank=True, help_text="Open request → container, in ms.")

    class Meta:
        ordering = ["-started_at"]
        constraints = [
            # A container is never shared: at most one live session per container.
            models.UniqueConstraint(
                fields=["container"], condition=models.Q(ended_at__isnull=True), name="session_one_live_per_container"
            ),
            # Opening a workspace that is already open resumes its session instead of claiming a second one.
            models.UniqueConstraint(
                fields=["workspace"], condition=models.Q(ended_at__isnull=True), name="session_one_live_per_workspace"
            ),
        ]
        indexes = [
            models.Index(fields=["tenant", "user", "-started_at"], name="session_tenant_user_idx"),
            models.Index(
                fields=["last_activity_at"], condition=models.Q(ended_at__isnull=True), name="session_live_idx"
            ),
            models.Index(fields=["workspace", "ended_at"], name="session_workspace_idx"),
        ]

    def __str__(self):
        return f"session {self.pk}"

    @property
    def is_live(self):
        return self.ended_at is None

    @property
    def state(self):
        """`starting` (no container yet), `live` or `ended`."""
        if self.ended_at is not None:
            return "ended"
        return "starting" if self.container_id is None else "live"


class GatewayEgressCursor(models.Model):
    """How far metering has read a gateway's egress log (workspaces/gateway/egress_log.py): moved in the transaction
    that records the bytes it read, so each line is metered once."""

    run_dir = models.CharField(max_length=500, unique=True)
    file = models.CharField(max_length=64, blank=True)
    offset = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self):
        return f"{self.run_dir}: {self.file or '-'} @ {self.offset}"
