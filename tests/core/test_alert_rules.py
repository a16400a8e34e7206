"""docs/alerts/hearth.rules.yml: Prometheus's rule-file structure, what each alert tells the operator, and that every
figure an expression reads is one /metrics serves. promtool is not installed on these machines (Debian's prometheus
package, 96 MB, with a daemon): the file is parsed here; `promtool check rules` is in docs/OBSERVABILITY.md."""
import re

import yaml
from django.conf import settings

from tests.metrics_support import scrape

RULES = settings.BASE_DIR / "docs" / "alerts" / "hearth.rules.yml"
REQUIRED_ALERTS = {  # what issue 15 asks for, by the alert that covers it
    "HearthPoolEmpty", "HearthBillingOutboxBacklog", "HearthOutboxBacklog", "HearthBillingDeadLetters",
    "HearthReconcilerLagging", "HearthNodeUnhealthy", "HearthQuotaSamplerFailing",
}
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
# Not figures: PromQL's operators and modifiers (functions are followed by "(" and skipped on their own).
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
FROM_PROMETHEUS = {"up"}  # written by Prometheus itself for each scrape


def _rules():
    document = yaml.safe_load(RULES.read_text())
    assert set(document) == {"groups"}
    return [rule for group in document["groups"] for rule in group["rules"]]


def _figures(expr):
    """The metric names an expression reads."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)  # label lists
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        rest = expr[match.end():].lstrip()
        if rest.startswith("(") or match.group() in KEYWORDS:
            continue
        names.add(match.group())
    return names


def test_the_file_has_prometheus_rule_structure_and_every_alert_says_what_to_do():
    rules = _rules()
    groups = yaml.safe_load(RULES.read_text())["groups"]
    assert len({g["name"] for g in groups}) == len(groups), "group names are unique"
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "alert names are unique"
    assert REQUIRED_ALERTS <= set(names), REQUIRED_ALERTS - set(names)
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, rule["alert"]
        assert DURATION.match(rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"page", "warning"}, rule["alert"]
        annotations = rule["annotations"]
        for key in ("summary", "description", "runbook"):
            assert isinstance(annotations.get(key), str) and len(annotations[key]) > 20, (rule["alert"], key)
        expr = rule["expr"]
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), rule["alert"]
        # Templates in annotations use Prometheus's {{ $labels.x }} / {{ $value }}, balanced.
        for text in annotations.values():
            assert text.count("{{") == text.count("}}"), rule["alert"]
            for label in re.findall(r"\$labels\.([a-z_]+)", text):
                assert label in expr or label in {"instance", "job"}, (rule["alert"], label)


def test_every_figure_the_alerts_read_is_served_on_metrics(db, redis_url):
    from core.celery_metrics import _failures
    from metering import metrics as metering_metrics
    from workspaces import metrics as workspace_metrics

    # Figures whose series appear with their first event (a template's claims, a task, a sampler's success).
    workspace_metrics.CLAIM_SECONDS.labels("alert-check", "warm")
    workspace_metrics.RECONCILER_LAST_SUCCESS.set(0)
    _failures().labels("alert-check")
    metering_metrics.SAMPLER_LAST_SUCCESS.labels("alert-check")
    served = scrape()
    names = set(served.families) | {name for name, _ in served.samples}
    for rule in _rules():
        unknown = _figures(rule["expr"]) - names - FROM_PROMETHEUS
        assert not unknown, f"{rule['alert']} reads {unknown}, which /metrics does not serve"


def test_the_figure_reader_finds_names_and_skips_functions_labels_and_keywords():
    assert _figures('max by (template) (hearth_a{state="warm"}) == 0 and on (template) hearth_b > 0') == {
        "hearth_a", "hearth_b"}
    assert _figures("time() - max(hearth_c) > 180 or absent(hearth_d)") == {"hearth_c", "hearth_d"}
    assert _figures("sum by (task) (increase(hearth_e[15m])) > 3") == {"hearth_e"}

