"""The pool page's what-if form (/admin/workspaces/workspacetemplate/pool/what-if/): staff with view permission on
templates run the simulator for other bounds and see its waits and cost next to the current bounds'."""
import pytest
from django.contrib.auth.models import Permission

from tests.factories import UserFactory
from workspaces.models import WorkspaceTemplate

pytestmark = pytest.mark.django_db

URL = "/admin/workspaces/workspacetemplate/pool/what-if/"


@pytest.fixture
def sim_template():
    return WorkspaceTemplate.objects.create(slug="sim-ide", name="IDE", image="hearth/none:1", warm_min=2)


@pytest.fixture
def viewer(client):
    user = UserFactory(is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_workspacetemplate"))
    client.force_login(user)
    return user


def test_the_form_compares_the_current_bounds_with_others(client, viewer, sim_template):
    page = client.get(URL)
    assert page.status_code == 200
    assert page.context["form"].initial["warm_min"] == 2  # the template's current bounds filled in
    r = client.get(URL, {"template": sim_template.pk, "warm_min": 0, "warm_max": 4, "users": 300, "days": 1})
    assert r.status_code == 200
    rows = r.context["rows"]
    assert [row["label"] for row in rows] == ["current", "what if"]
    assert rows[0]["bounds"] == "2–10" and rows[1]["bounds"] == "0–4"
    for row in rows:
        assert row["wait_p99_s"] is not None and row["cost_per_user_month_usd"] > 0 and row["users"] == 300
    # Same population, a smaller pool: fewer warm container-hours.
    assert rows[1]["warm_container_hours"] < rows[0]["warm_container_hours"]
    assert b"what-if-results" in r.content and b"Cost per user-month" in r.content
    assert b"what-if/" in client.get("/admin/workspaces/workspacetemplate/pool/").content  # linked from the page


@pytest.mark.parametrize(("params", "message"), [
    ({"warm_min": 5, "warm_max": 2}, "must be at least the minimum (5)"),
    ({"warm_min": -1, "warm_max": 2}, "greater than or equal to 0"),
    ({"warm_min": 1, "warm_max": 2, "days": 30}, "less than or equal to 3"),
    ({"warm_min": "x", "warm_max": 2}, "Enter a whole number"),
])
def test_bad_input_is_a_form_error(client, viewer, sim_template, params, message):
    r = client.get(URL, {"template": sim_template.pk, "users": 100, "days": 1, **params})
    assert r.status_code == 200
    assert not r.context["rows"]
    assert message in r.content.decode()


def test_staff_without_the_view_permission_and_members_are_refused(client, sim_template):
    client.force_login(UserFactory(is_staff=True))
    assert client.get(URL).status_code == 403
    client.force_login(UserFactory())
    r = client.get(URL)
    assert r.status_code == 302 and "/login/" in r["Location"]
