"""The public write interface of metering: every service function other apps and metering's views call, from the
module that owns it (ingestion, entitlements, samplers, meters; service tokens are in `metering.tokens`)."""
from metering.entitlements import entitlement_check, usage_thresholds_check
from metering.exceptions import QuotaExceeded
from metering.ingestion import (
    IngestResult,
    egress_bytes_record,
    usage_correction_record,
    usage_ingest,
    usage_record,
    usage_record_many,
    workspace_seconds_record,
)
from metering.meters import meter_declare
from metering.samplers import seats_sample, storage_sample

__all__ = [
    "IngestResult", "QuotaExceeded", "entitlement_check", "egress_bytes_record", "meter_declare",
    "seats_sample", "storage_sample", "usage_correction_record",
    "usage_ingest", "usage_record", "usage_record_many", "usage_thresholds_check", "workspace_seconds_record",
]
