"""The API toolkit's guards: every view under /api/v1/ is tenant-scoped, every view under /scim/ is scoped by its
SCIM token, and no view can bypass the scoping."""
import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from core.api import TenantScopedView
from sso.scim_api import ScimView


@pytest.mark.parametrize("base", [TenantScopedView, ScimView])
def test_a_view_overriding_get_queryset_is_refused_at_class_creation(base):
    with pytest.raises(TypeError, match="scoped_queryset"):
        class UnscopedApi(base):  # noqa: F841
            def get_queryset(self):
                return []


def _views(patterns, prefix=""):
    for p in patterns:
        if isinstance(p, URLResolver):
            yield from _views(p.url_patterns, prefix + str(p.pattern))
        elif isinstance(p, URLPattern):
            handlers = getattr(p.callback, "operation_handlers", None)
            for callback in (handlers.values() if handlers else [p.callback]):
                yield prefix + str(p.pattern), getattr(callback, "view_class", None) or getattr(
                    callback, "cls", None)


def test_every_scim_view_is_scoped_by_its_token():
    """Each view under /scim/v2/ resolves its tenant from the SCIM token through ScimView; only the JSON 404 for
    unknown paths (no data) is a plain function."""
    found = [(path, cls) for path, cls in _views(get_resolver().url_patterns) if path.startswith("scim/")]
    assert len(found) >= 9
    unscoped = [f"{path}: {cls}" for path, cls in found if cls is not None and not issubclass(cls, ScimView)]
    plain = [path for path, cls in found if cls is None]
    assert not unscoped and plain == ["scim/v2/"]


def test_every_api_view_is_tenant_scoped():
    """A guard for every app: each view under /api/v1/ resolves its tenant through TenantScopedView.

    A view that truly has no tenant (a public endpoint) says so with `tenant_scope_exempt = "<why>"`.
    """
    found = [(path, cls) for path, cls in _views(get_resolver().url_patterns) if path.startswith("api/v1/")]
    assert len(found) >= 15
    unscoped = [f"{path}: {cls}" for path, cls in found
                if not (isinstance(cls, type) and issubclass(cls, TenantScopedView))
                and not getattr(cls, "tenant_scope_exempt", None)]
    assert not unscoped
