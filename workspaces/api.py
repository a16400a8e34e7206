"""REST API of the workspaces app: templates, workspaces (create, open, delete) and sessions.

Every view is a TenantScopedView with write_roles=None: members create, open and close their own
workspaces; the selectors decide who sees what (members: their own; owners/admins: the tenant's).
"""
from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response

from core.api import StrictInputSerializer, TenantScopedView, error_responses, shared_representation
from core.pagination import PAGE_PARAMETERS, Page, paged_response
from workspaces import selectors, services
from workspaces.models import Workspace

_DESCRIBED = {
        400: "Invalid input (unknown or disabled template, missing confirmation).",
        401: "Missing, invalid or revoked API token.",
        403: "Not allowed: the tenant is suspended, the quota is used up, or only the owner may open it.",
        404: "No such workspace or session in the caller's tenant (or not visible to the caller).",
        409: "Conflicts with the current state (pool paused, concurrency limit, session ended).",
        503: ("Try again after Retry-After seconds: no healthy node has room (no_capacity), the workspace's node does "
              "not answer (node_unavailable), or no container came free in time (pool_busy)."),
}


def _errors(*codes):
    return error_responses(_DESCRIBED, *codes)


class TemplateListApi(TenantScopedView):
    class OutputSerializer(serializers.Serializer):
        slug = serializers.CharField()
        name = serializers.CharField()
        description = serializers.CharField()
        image = serializers.CharField()
        cpus = serializers.DecimalField(max_digits=5, decimal_places=2)
        memory_mb = serializers.IntegerField()
        idle_timeout_minutes = serializers.IntegerField()
        pool_paused = serializers.BooleanField()
        warm = serializers.IntegerField(help_text="Containers ready to open at once.")

    def scoped_queryset(self):
        return selectors.template_list()  # templates are global; the view still needs a tenant member

    @extend_schema(responses={200: OutputSerializer(many=True), **_errors()}, tags=["workspaces"])
    def get(self, request):
        return Response(self.OutputSerializer(self.get_queryset(), many=True).data)


class WorkspaceOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    template = serializers.CharField(source="template.slug")
    owner = serializers.EmailField(source="owner.email")
    host_key = serializers.CharField()
    created_at = serializers.DateTimeField()


_datetime = serializers.DateTimeField().to_representation


def _workspace_item(row):
    """WorkspaceOutputSerializer's body for a selectors.WorkspaceRow, written out: DRF's field-by-field
    representation costs about 30 µs a row (3 ms for a page of 100); tests pin the two equal."""
    return {"id": row.id, "name": row.name, "template": row.template_slug, "owner": row.owner_email,
            "host_key": row.host_key, "created_at": _datetime(row.created_at)}


class WorkspaceListApi(TenantScopedView):
    """Members: their own workspaces; owners and admins: all of the tenant's."""

    def scoped_queryset(self):
        return selectors.workspace_list(tenant=self.tenant, membership=self.membership)

    @extend_schema(parameters=PAGE_PARAMETERS, responses={200: WorkspaceOutputSerializer(many=True),
                                                          **_errors(400)}, tags=["workspaces"])
    def get(self, request):
        # The API's most frequent list reads through workspace_page (the same rows as scoped_queryset, in the same
        # tenant and visibility, by a prepared statement) and pages as paged_response does, cursor included.
        page = Page(request, Workspace, ("-pk",))
        rows = selectors.workspace_page(tenant=self.tenant, membership=self.membership, limit=page.limit + 1,
                                        before_id=page.after[0] if page.after else None)
        return page.response([_workspace_item(row) for row in rows[: page.limit]], rows, lambda row: [row.id])


class WorkspaceCreateApi(TenantScopedView):
    """Create a workspace for the caller from a template slug."""

    write_roles = None

    class InputSerializer(StrictInputSerializer):
        name = serializers.CharField(max_length=80)
        template = serializers.SlugField(max_length=40)

    def scoped_queryset(self):
        return selectors.workspace_list(tenant=self.tenant, membership=self.membership)

    @extend_schema(request=InputSerializer, responses={201: WorkspaceOutputSerializer, **_errors(400, 409)},
                   tags=["workspaces"])
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        workspace = services.workspace_create(tenant=self.tenant, owner=request.user, actor=request.user,
                                              **data.validated_data)
        return Response(WorkspaceOutputSerializer(workspace).data, status=status.HTTP_201_CREATED)


class WorkspaceGetApi(TenantScopedView):
    def scoped_queryset(self):
        return selectors.workspace_list(tenant=self.tenant, membership=self.membership)

    @extend_schema(responses={200: WorkspaceOutputSerializer, **_errors(404)}, tags=["workspaces"])
    def get(self, request, pk):
        return Response(WorkspaceOutputSerializer(self.get_object()).data)


class WorkspaceDeleteApi(TenantScopedView):
    """Delete the workspace and its files; `confirm` (query or body) must repeat its name."""

    write_roles = None

    def scoped_queryset(self):
        return selectors.workspace_list(tenant=self.tenant, membership=self.membership)

    @extend_schema(parameters=[OpenApiParameter("confirm", str, description="The workspace's name.")],
                   responses={204: None, **_errors(400, 404)}, tags=["workspaces"])
    def delete(self, request, pk):
        workspace = self.get_object()
        confirm = request.query_params.get("confirm") or (request.data or {}).get("confirm")
        services.workspace_delete(workspace=workspace, actor=request.user, confirm=confirm)
        return Response(status=status.HTTP_204_NO_CONTENT)


class WorkspaceOpenApi(TenantScopedView):
    write_roles = None

    class OutputSerializer(serializers.Serializer):
        session = serializers.UUIDField(source="session.pk")
        state = serializers.ChoiceField(choices=["starting", "live"])
        url = serializers.CharField()
        expires_at = serializers.DateTimeField()
        resumed = serializers.BooleanField()
        # While `starting`: its place in the template's line of cold opens (1: next) and the expected wait; else null.
        position = serializers.IntegerField(source="place.position", allow_null=True)
        expected_wait_s = serializers.FloatField(source="place.expected_wait_s", allow_null=True)

    _represent = staticmethod(shared_representation(OutputSerializer))

    def scoped_queryset(self):
        return selectors.workspace_list(tenant=self.tenant, membership=self.membership)

    @extend_schema(request=None, responses={200: OutputSerializer, 202: OutputSerializer,
                                            **_errors(403, 404, 409, 503)},
                   description="200: the session is live. 202: no warm container was free; the session is "
                               "`starting` while a worker starts one (poll `GET sessions/{id}`, or open `url`: "
                               "the gateway shows a page that reloads itself until the workspace answers).",
                   tags=["workspaces"])
    def post(self, request, pk):
        # workspace_open reads the workspace itself (one prepared lookup; an ORM get_object before it cost about
        # 1 ms of CPU) and, given the token's tenant, answers 404 for a workspace of any other tenant, as
        # scoped_queryset would: same tenant, same visibility (a member's own; a manager's 403 not_owner).
        opened = services.workspace_open(workspace=Workspace(pk=pk), user=request.user, tenant=self.tenant,
                                         start_later=settings.WORKSPACES_COLD_OPEN_ASYNC)
        return Response(self._represent(opened),
                        status=status.HTTP_202_ACCEPTED if opened.state == "starting" else status.HTTP_200_OK)


class SessionOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    workspace = serializers.IntegerField(source="workspace_id")
    user = serializers.EmailField(source="user.email")
    container = serializers.CharField(source="container.name", allow_null=True)
    node = serializers.CharField(source="container.node.name", allow_null=True)
    state = serializers.ChoiceField(choices=["starting", "live", "ended"])
    cold_start = serializers.BooleanField()
    started_at = serializers.DateTimeField()
    last_activity_at = serializers.DateTimeField()
    ended_at = serializers.DateTimeField()
    end_reason = serializers.CharField()
    egress_bytes = serializers.IntegerField(source="egress_bytes_metered", help_text="Sent out so far, metered.")


class SessionListApi(TenantScopedView):
    def scoped_queryset(self):
        return selectors.session_list(tenant=self.tenant, membership=self.membership)

    @extend_schema(parameters=[OpenApiParameter("live", bool, description="Only live sessions."), *PAGE_PARAMETERS],
                   responses={200: SessionOutputSerializer(many=True), **_errors(400)}, tags=["sessions"])
    def get(self, request):
        sessions = self.get_queryset()
        if request.query_params.get("live") in ("1", "true"):
            sessions = sessions.filter(ended_at__isnull=True)
        return paged_response(request, sessions, SessionOutputSerializer, order=("-started_at", "-pk"))


class SessionDetailApi(TenantScopedView):
    def scoped_queryset(self):
        return selectors.session_list(tenant=self.tenant, membership=self.membership)

    @extend_schema(responses={200: SessionOutputSerializer, **_errors(404)}, tags=["sessions"])
    def get(self, request, pk):
        return Response(SessionOutputSerializer(self.get_object()).data)


class SessionCloseApi(TenantScopedView):
    write_roles = None

    def scoped_queryset(self):
        return selectors.session_list(tenant=self.tenant, membership=self.membership)

    @extend_schema(request=None, responses={200: SessionOutputSerializer, **_errors(404)}, tags=["sessions"])
    def post(self, request, pk):
        session = services.session_close(session=self.get_object(), actor=request.user)
        session.refresh_from_db()
        return Response(SessionOutputSerializer(session).data)


class SessionHeartbeatApi(TenantScopedView):
    """The session, if it is the caller's and live (409 once ended). Kept for compatibility: it is no longer
    activity (what the browser sends through the gateway is; docs/POOL.md, "Reclaim")."""

    write_roles = None

    def scoped_queryset(self):
        return selectors.session_list(tenant=self.tenant, membership=self.membership)

    @extend_schema(request=None, responses={200: SessionOutputSerializer, **_errors(404, 409)},
                   tags=["sessions"])
    def post(self, request, pk):
        session = services.session_touch(session=self.get_object(), user=request.user)
        return Response(SessionOutputSerializer(session).data)
