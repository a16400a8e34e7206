"""API errors when the database goes away under a request (what the chaos suite's PostgreSQL restart does)."""
import psycopg
import pytest
from django.db import connection

from tests.conftest import api_client_for
from tests.factories import MembershipFactory


@pytest.mark.django_db(transaction=True)
def test_a_cut_database_connection_answers_503_json_not_an_html_500():
    """The request's connection is terminated by PostgreSQL (as a restart does) before its first query: the API
    answers 503 {"code": "database_unavailable"} with Retry-After, and the next request is served again."""
    client = api_client_for(MembershipFactory(role="owner"))
    assert client.get("/api/v1/tenant").status_code == 200
    backend = connection.connection.info.backend_pid
    params = connection.settings_dict
    with psycopg.connect(host=params["HOST"], port=params["PORT"] or 5432, user=params["USER"],
                         dbname=params["NAME"], autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [backend])

    response = client.get("/api/v1/tenant")
    assert response.status_code == 503, response.content[:200]
    assert response.json()["code"] == "database_unavailable" and response.json()["detail"]
    assert response["Retry-After"] == "1"

    connection.close_if_unusable_or_obsolete()  # what Django runs at the end of a real request (request_finished)
    assert client.get("/api/v1/tenant").status_code == 200
