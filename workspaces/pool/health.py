"""Node health, the one rule and what feeds it: a node is healthy while its engine answers — fewer than
WORKSPACES_NODE_FAILED_CALLS failed calls in a row since its last answer, and that answer (the heartbeat) no older
than WORKSPACES_NODE_HEARTBEAT_TIMEOUT (a node never asked yet counts as answering). Placement, the claim statement,
the open's resume, the reconciler and admin all read this rule; the engine-event follower, the reconciler and every
call that finds the engine gone feed it."""
import logging

from django.conf import settings
from django.db.models import BooleanField, F
from django.db.models.expressions import RawSQL
from django.utils import timezone

from workspaces.models import Node

log = logging.getLogger(__name__)

_N = f'"{Node._meta.db_table}"'
# The rule as SQL on the node table under its own name (the ORM's alias; raw statements join it unaliased).
HEALTHY_SQL = (f"({_N}.failed_calls < %s AND ({_N}.last_seen_at IS NULL OR "
               f"{_N}.last_seen_at >= statement_timestamp() - make_interval(secs => %s)))")


def healthy_params():
    return [int(settings.WORKSPACES_NODE_FAILED_CALLS), float(settings.WORKSPACES_NODE_HEARTBEAT_TIMEOUT)]


def node_healthy():
    """The rule as an ORM expression: `Node.objects.filter(node_healthy())`, or annotate a node list with it."""
    return RawSQL(HEALTHY_SQL, healthy_params(), output_field=BooleanField())


def node_is_healthy(node_id) -> bool:
    return Node.objects.filter(node_healthy(), pk=node_id).exists()


def node_answered(node, *, now=None, events_cursor_ns=None):
    """The engine answered (a heartbeat, a reconciler pass): healthy again, its failed calls forgotten."""
    fields = dict(last_seen_at=now or timezone.now(), failed_calls=0, last_error="")
    if events_cursor_ns is not None:
        fields["events_cursor_ns"] = events_cursor_ns
    Node.objects.filter(pk=node.pk).update(**fields)


def node_call_failed(node, what, exc, *, now=None):
    """A call to the engine found it gone (refused, timed out, stream cut). The error is for admin and the log only:
    it names the engine's URL, which no answer to a user carries."""
    now = now or timezone.now()
    log.warning("node %s: %s: %s", node.name, what, exc)
    Node.objects.filter(pk=node.pk).update(failed_calls=F("failed_calls") + 1,
                                           last_error=f"{now:%Y-%m-%d %H:%M:%S} {what}: {exc}"[:2000])
