"""Errors of the metering app."""
from tenants.exceptions import Forbidden


class QuotaExceeded(Forbidden):
    """An allowance is used up: opening a workspace is refused (403, code `quota_exceeded`).

    `extra` carries `meter`, `resets_at` (ISO 8601 or None) and `upgrade_url` for the API's answer.
    """

    code = "quota_exceeded"

    def __init__(self, message, *, meter, resets_at=None, upgrade_url=None, extra=None):
        super().__init__(message, extra={
            "meter": meter,
            "resets_at": resets_at.isoformat() if resets_at else None,
            "upgrade_url": upgrade_url,
            **(extra or {}),
        })
        self.meter = meter
        self.resets_at = resets_at
        self.upgrade_url = upgrade_url
