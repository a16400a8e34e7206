"""Metering's public write interface: its service functions, re-exported from the module that owns each concern.

Other apps, and metering's API, admin and tasks, call them here (ingestion, entitlements, samplers, meters);
service tokens live in `metering.tokens`.
"""
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
