"""The usage API: ingestion by service token (POST /usage/events) and a tenant's current usage (GET /usage)."""
import json

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import BaseParser
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api import TenantScopedView
from core.request_limits import read_limited
from metering import selectors, services
from metering.authentication import IsServiceToken, ServiceTokenAuthentication
from metering.models import UsageRollup
from tenants.authentication import ApiTokenAuthentication
from tenants.exceptions import Forbidden, ServiceError


class RawJSONParser(BaseParser):
    """Hands the body over undecoded: the view decodes it once, with plain `json`, for speed."""

    media_type = "application/json"

    def parse(self, stream, media_type=None, parser_context=None):
        return read_limited(stream)


class UsageEventsIngestApi(APIView):
    """POST /api/v1/usage/events — record a batch of up to METERING_MAX_BATCH events exactly once.

    Body: {"events": [{"id", "tenant", "meter", "quantity", "timestamp", "subject"}, …]} or the bare list.
    A bad event is rejected alone with a reason, the others are recorded; a malformed body or an oversize
    batch is refused whole (400). Validation is plain Python: a serializer per event costs too much here.
    """

    tenant_scope_exempt = "service tokens record usage for any tenant; tenant tokens are refused (403)"

    # A tenant's personal token authenticates too, so that it is refused with a clear 403 instead of a 401.
    authentication_classes = [ServiceTokenAuthentication, ApiTokenAuthentication]
    permission_classes = [IsServiceToken]
    parser_classes = [RawJSONParser]

    class InputSerializer(serializers.Serializer):  # the schema only; never used to validate (see above)
        class Meta:
            ref_name = "UsageEventsIngestInput"

        events = serializers.ListField(child=serializers.DictField(), max_length=1000)

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "UsageEventsIngestOutput"

        accepted = serializers.IntegerField()
        duplicates = serializers.IntegerField()
        rejected = serializers.ListField(child=serializers.DictField())

    @extend_schema(request=InputSerializer, responses={200: OutputSerializer})
    def post(self, request):
        try:
            body = json.loads(request.data or b"null")
        except (ValueError, UnicodeDecodeError):
            raise ServiceError("The body is not valid JSON.", code="malformed") from None
        events = body.get("events") if isinstance(body, dict) else body
        if not isinstance(events, list):
            raise ServiceError('Send {"events": [ … ]} or a JSON list of events.', code="malformed")
        if len(events) > settings.METERING_MAX_BATCH:
            raise ServiceError(
                f"A batch holds at most {settings.METERING_MAX_BATCH} events; this one has {len(events)}. "
                "Split it.", code="batch_too_large")
        result = services.usage_ingest(events, token=request.auth)
        return Response(result.as_dict(), status=status.HTTP_200_OK)


class UsageFigureSerializer(serializers.Serializer):
    class Meta:
        ref_name = "UsageFigure"

    used = serializers.IntegerField()
    included = serializers.IntegerField(allow_null=True)
    remaining = serializers.IntegerField(allow_null=True)
    unit = serializers.CharField()
    peak = serializers.IntegerField(required=False, help_text="Gauges: the period's peak sample.")
    overage = serializers.IntegerField(required=False, help_text="Plans with paid overage: used beyond included.")


class UsagePeriodSerializer(serializers.Serializer):
    class Meta:
        ref_name = "UsagePeriod"

    start = serializers.DateTimeField()
    end = serializers.DateTimeField()


class UsageDaySerializer(UsagePeriodSerializer):
    class Meta:
        ref_name = "UsageDay"

    meters = serializers.DictField(child=UsageFigureSerializer())


class UsageCurrentSerializer(serializers.Serializer):
    class Meta:
        ref_name = "UsageCurrent"

    tenant = serializers.CharField()
    plan = serializers.CharField()
    period = UsagePeriodSerializer()
    meters = serializers.DictField(child=UsageFigureSerializer())
    day = UsageDaySerializer()


class UsageCurrentApi(TenantScopedView):
    """GET /api/v1/usage — the tenant's usage this billing month and today, against its plan."""

    http_method_names = ["get", "head", "options"]

    OutputSerializer = UsageCurrentSerializer

    def scoped_queryset(self):
        return UsageRollup.objects.filter(tenant=self.tenant)

    @extend_schema(responses={200: OutputSerializer})
    def get(self, request):
        usage = selectors.usage_current(tenant=self.tenant)
        return Response(self.OutputSerializer(usage).data)


class MeterDeclareApi(APIView):
    """POST /api/v1/usage/meters — a service declares a custom meter (idempotent on slug). Service tokens only."""

    tenant_scope_exempt = "meters are platform-wide and declared by services; tenant tokens are refused (403)"

    authentication_classes = [ServiceTokenAuthentication, ApiTokenAuthentication]
    permission_classes = [IsServiceToken]

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "MeterDeclareInput"

        slug = serializers.CharField(max_length=64)
        name = serializers.CharField(max_length=120)
        unit = serializers.CharField(max_length=32)
        aggregation = serializers.ChoiceField(choices=["sum", "max"], default="sum")
        billable = serializers.BooleanField(default=True)
        description = serializers.CharField(required=False, allow_blank=True, default="")

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "Meter"

        slug = serializers.CharField()
        name = serializers.CharField()
        unit = serializers.CharField()
        aggregation = serializers.CharField()
        billable = serializers.BooleanField()
        declared_by = serializers.CharField()

    @extend_schema(request=InputSerializer, responses={201: OutputSerializer})
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        if data.validated_data["slug"] not in request.auth.meters:
            raise Forbidden(f"This service token may not declare meter '{data.validated_data['slug']}': only the "
                            "meters of its scope.", code="meter_not_allowed")
        meter = services.meter_declare(**data.validated_data, declared_by="api",
                                       actor=f"service token {request.auth.name}")
        return Response(self.OutputSerializer(meter).data, status=status.HTTP_201_CREATED)
