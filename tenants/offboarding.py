"""Hooks other apps register so that suspension, offboarding and a user's loss of access (member removal,
deactivation, deletion) reach what they own (sessions, storage, usage).

Dependencies point to tenants, so tenants cannot import the apps that build on it; they register here
from their AppConfig.ready().
"""
import logging

log = logging.getLogger(__name__)

_suspend_hooks = []
_teardown_hooks = []
_exporters = {}
_access_lost_hooks = []
_user_delete_hooks = []


def on_suspend(fn):
    """fn(tenant): end running sessions and the like; called after the suspension commits."""
    _suspend_hooks.append(fn)
    return fn


def on_teardown(fn):
    """fn(tenant): release what the app holds for a tenant about to be deleted (in its transaction)."""
    _teardown_hooks.append(fn)
    return fn


def on_access_lost(fn):
    """fn(*, user, tenant, actor): end what `user` runs in `tenant` (every tenant if None); called after commit."""
    _access_lost_hooks.append(fn)
    return fn


def on_user_delete(fn):
    """fn(*, user, actor): end and meter what the user runs and remove their files, before their row is deleted."""
    _user_delete_hooks.append(fn)
    return fn


def exporter(name):
    """fn(tenant) -> JSON-able data, stored under `name` in the offboarding archive."""

    def register(fn):
        _exporters[name] = fn
        return fn

    return register


def run_suspend_hooks(tenant):
    for fn in _suspend_hooks:
        fn(tenant)


def run_teardown_hooks(tenant):
    for fn in _teardown_hooks:
        fn(tenant)


def run_exporters(tenant):
    return {name: fn(tenant) for name, fn in _exporters.items()}


def run_access_lost_hooks(*, user, tenant, actor):
    for fn in _access_lost_hooks:
        fn(user=user, tenant=tenant, actor=actor)


def run_user_delete_hooks(*, user, actor):
    for fn in _user_delete_hooks:
        fn(user=user, actor=actor)
