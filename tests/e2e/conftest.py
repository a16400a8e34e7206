"""End-to-end tests drive a live server, so their rows are committed and the database is flushed after each.

The flush also removes what the migrations loaded (plans, the site); after every test here the data serialized
at session start is put back, so tests that run later still find them.
"""
import pytest
from pytest_django.plugin import blocking_manager_key


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield  # after every fixture, the database flush included
    if "django_db_serialized_rollback" not in getattr(item, "fixturenames", ()):
        return
    from django.db import connections

    with item.config.stash[blocking_manager_key].unblock():
        connection = connections["default"]
        contents = getattr(connection, "_test_serialized_contents", None)
        if contents:
            connection.creation.deserialize_db_from_string(contents)
