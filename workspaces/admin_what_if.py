"""The pool page's what-if form (`/admin/workspaces/workspacetemplate/pool/what-if/`): a short simulator run of a
template's pool with other bounds, its predicted waits and cost next to the current bounds'."""
from django import forms
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse

from workspaces.models import WorkspaceTemplate
from workspaces.pool.demand import Bounds
from workspaces.simulation import simulation_run, template_bounds

# A short run: a few seconds of CPU at most on this machine (two weekdays of a thousand users take well under one).
WHAT_IF_USERS = 1000
WHAT_IF_DAYS = 2
WHAT_IF_MAX_USERS = 5000
WHAT_IF_MAX_DAYS = 3


class WhatIfForm(forms.Form):
    template = forms.ModelChoiceField(queryset=WorkspaceTemplate.objects.filter(enabled=True).order_by("pk"),
                                      empty_label=None)
    warm_min = forms.IntegerField(label="minimum", min_value=0, max_value=1000)
    warm_max = forms.IntegerField(label="maximum", min_value=0, max_value=1000)
    users = forms.IntegerField(initial=WHAT_IF_USERS, min_value=1, max_value=WHAT_IF_MAX_USERS)
    days = forms.IntegerField(initial=WHAT_IF_DAYS, min_value=1, max_value=WHAT_IF_MAX_DAYS,
                              help_text="From a Monday: weekdays first.")

    def clean(self):
        cleaned = super().clean()
        low, high = cleaned.get("warm_min"), cleaned.get("warm_max")
        if low is not None and high is not None and low > high:
            self.add_error("warm_max", f"The maximum ({high}) must be at least the minimum ({low}).")
        return cleaned


def _row(label, bounds, figures):
    return {"label": label, "bounds": f"{bounds.minimum}–{bounds.maximum}", **figures}


def what_if_view(model_admin, request):
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    form = WhatIfForm(request.GET or None)
    rows = []
    if form.is_valid():
        data = form.cleaned_data
        template = data["template"]
        current = template_bounds(template)
        proposed = Bounds(minimum=data["warm_min"], maximum=data["warm_max"])
        # The same seed: both runs replay the same population, so the difference is the bounds'.
        for label, bounds in (("current", current), ("what if", proposed)):
            run = simulation_run(users=data["users"], days=data["days"], seed=1, template=template, bounds=bounds,
                                 trace=False)
            rows.append(_row(label, bounds, run.figures))
    elif not request.GET:
        template = WorkspaceTemplate.objects.filter(enabled=True).order_by("pk").first()
        if template is not None:
            bounds = template_bounds(template)
            form = WhatIfForm(initial={"template": template, "warm_min": bounds.minimum, "warm_max": bounds.maximum,
                                       "users": WHAT_IF_USERS, "days": WHAT_IF_DAYS})
    return TemplateResponse(request, "admin/workspaces/pool_what_if.html", {
        **model_admin.admin_site.each_context(request),
        "title": "Warm pool: what if",
        "form": form,
        "rows": rows,
        "opts": model_admin.model._meta,
    })
