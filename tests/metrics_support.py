"""Reading /metrics in tests: scraped through the real view and parsed with prometheus_client's own parser."""
from prometheus_client.parser import text_string_to_metric_families


class Scrape:
    """One parsed /metrics: families by name and every sample's value by (sample name, labels)."""

    def __init__(self, text):
        self.text = text
        self.families = {family.name: family for family in text_string_to_metric_families(text)}
        self.samples = {(s.name, frozenset(s.labels.items())): s.value
                        for family in self.families.values() for s in family.samples}

    def value(self, name, default=0.0, **labels):
        return self.samples.get((name, frozenset(labels.items())), default)

    def series(self, name):
        return {frozenset(labels): value for (sample, labels), value in self.samples.items() if sample == name}


def scrape(client=None, **extra):
    """GET /metrics from loopback (Django's test client) and parse it; fails on anything but a 200."""
    if client is None:
        from django.test import Client

        client = Client()
    response = client.get("/metrics", REMOTE_ADDR="127.0.0.1", **extra)
    assert response.status_code == 200, response.content[:500]
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    return Scrape(response.content.decode())
