"""The business pages' one input: a range of UTC days (and the CSV format)."""
from datetime import timedelta

from django import forms
from django.utils import timezone

FORMATS = ("html", "csv")
DEFAULT_DAYS = 30
MAX_DAYS = 400


class RangeForm(forms.Form):
    start = forms.DateField(required=False, input_formats=["%Y-%m-%d"], help_text="YYYY-MM-DD (UTC)",
                            error_messages={"invalid": "Write the start as YYYY-MM-DD, e.g. 2026-03-01."})
    end = forms.DateField(required=False, input_formats=["%Y-%m-%d"], help_text="YYYY-MM-DD, included",
                          error_messages={"invalid": "Write the end as YYYY-MM-DD, e.g. 2026-03-31."})
    format = forms.ChoiceField(required=False, choices=[(name, name) for name in FORMATS])

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        today = timezone.now().date()
        end = data.get("end") or today
        start = data.get("start") or end - timedelta(days=DEFAULT_DAYS - 1)
        if end > today:
            self.add_error("end", f"The end cannot be after today ({today:%Y-%m-%d}).")
        elif start > end:
            self.add_error("start", "The start must not be after the end.")
        elif (end - start).days + 1 > MAX_DAYS:
            self.add_error("start", f"A range covers at most {MAX_DAYS} days.")
        data["start"], data["end"] = start, end
        return data
