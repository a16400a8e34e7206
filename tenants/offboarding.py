"""Hooks other apps register so that suspension and offboarding reach what they own (sessions, storage, usage).

Dependencies point to tenants, so tenants cannot import the apps that build on it; they register here
from their AppConfig.ready().
"""
import logging

log = logging.getLogger(__name__)

_suspend_hooks = []
_teardown_hooks = []
_exporters = {}


def on_suspend(fn):
    """fn(tenant): end running sessions and the like; called after the suspension commits."""
    _suspend_hooks.append(fn)
    return fn


def on_teardown(fn):
    """fn(tenant): release what the app holds for a tenant about to be deleted (in its transaction)."""
    _teardown_hooks.append(fn)
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
