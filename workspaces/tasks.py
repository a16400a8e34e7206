"""Celery tasks of the workspaces app: the pool, reclaim and reconciler ticks (thin wrappers around the pool, the
services and the reconciler)."""
from celery import shared_task

from workspaces import pool, reconciler, services


@shared_task(acks_late=True, ignore_result=True)
def pool_fill(template_id=None):
    """Top up the warm pools; safe to repeat (the warm target is rechecked under a lock per node)."""
    return pool.pool_fill(template_id=template_id)


@shared_task(acks_late=True, ignore_result=True)
def sessions_reclaim():
    """End idle sessions and meter the live ones."""
    return services.sessions_reclaim()


@shared_task(acks_late=True, ignore_result=True)
def reconcile():
    """Make engines and database agree, then refill what the reconciler freed."""
    report = reconciler.reconcile()
    pool.pool_fill()
    return report


@shared_task(acks_late=True, ignore_result=True)
def session_start(session_id):
    """Start the container of a `starting` session (a cold open answered at once); safe to repeat."""
    services.session_start(session_id=session_id)
