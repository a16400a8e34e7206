"""Samplers of gauges: a tenant's storage bytes and its seats, recorded as usage events (hourly, and on changes).

Their event ids name the tenant by primary key after a '#' (`storage:#<pk>:<hour>`): a slug is reused after
offboarding while the old tenant's events stay, and no slug contains '#', so no new id meets an old
`storage:<slug>:…` one."""
import os
from datetime import UTC

from django.utils import timezone

from metering import metrics
from metering.ingestion import usage_record
from metering.meters import SEATS, STORAGE_BYTES
from tenants import files


def _directory_bytes(path):
    """Regular files' bytes below `path`, at any depth and path length, never following a symlink."""
    for _ in range(2):
        try:
            return files.tree_bytes(path)
        except files.TreeChanged:  # a directory moved under the walk: measure again
            continue
    return files.tree_bytes(path)


def _mount_points(path):
    try:
        parent = os.stat(path).st_dev
        with os.scandir(path) as it:
            return [entry.path for entry in it
                    if entry.is_dir(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_dev != parent]
    except FileNotFoundError:
        return []


@metrics.sampler("storage")
def storage_sample(*, tenant, now=None):
    """Measure the tenant's storage directory and record it as a storage_bytes sample (one per tenant and hour)."""
    from tenants.services import tenant_storage_path

    now = now or timezone.now()
    root = tenant_storage_path(tenant.slug)
    # Each user's directory may be a volume of its own (a mounted image), which the walk does not enter.
    size = _directory_bytes(root) + sum(_directory_bytes(user_dir) for user_dir in _mount_points(root / "users"))
    hour = now.astimezone(UTC).strftime("%Y%m%dT%H")
    usage_record(tenant=tenant, meter=STORAGE_BYTES, quantity=size, timestamp=now,
                 event_id=f"storage:#{tenant.pk}:{hour}", subject={"path": "tenant"})
    return size


@metrics.sampler("seats")
def seats_sample(*, tenant, now=None):
    """Record the tenant's member count as a seats sample; the day's and the month's figure is the peak.

    One sample per tenant, hour and count: the hourly task repeats harmlessly, and a member joining mid-hour
    (sampled at once by the outbox consumer in `metering.consumers`) still raises the peak.
    """
    now = now or timezone.now()
    members = tenant.memberships.count()
    hour = now.astimezone(UTC).strftime("%Y%m%dT%H")
    usage_record(tenant=tenant, meter=SEATS, quantity=members, timestamp=now,
                 event_id=f"seats:#{tenant.pk}:{hour}:{members}")
    return members
