"""Shared fixtures: services the suite needs (required under CI=true), users, tenants, API clients."""
import os

import pytest
from rest_framework.test import APIClient

from tests.factories import MembershipFactory, TenantFactory, UserFactory

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_service(name, check):
    """Run `check()`; if the service is missing, fail under CI and skip elsewhere."""
    try:
        check()
    except Exception as exc:  # any failure to reach the service means it is missing
        message = f"{name} is not available: {type(exc).__name__}: {exc}. `make test` starts it."
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def redis_url():
    import redis
    from django.conf import settings

    require_service("Redis", lambda: redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1).ping())
    return settings.REDIS_URL


@pytest.fixture(scope="session")
def docker_client():
    import docker
    from django.conf import settings

    client = docker.DockerClient(base_url=settings.DOCKER_HOST, timeout=30)
    require_service("The Docker engine", client.ping)
    yield client
    client.close()


@pytest.fixture(scope="session", autouse=True)
def _no_firewall_rules_left():
    """The workspaces' firewall chains that this session's runtimes installed (this instance and its test
    instances, e.g. `<instance>-race`) go at the end; other instances' are left alone."""
    yield
    import shutil
    import subprocess

    from django.conf import settings

    if shutil.which("iptables") is None or os.geteuid() != 0:
        return
    from workspaces import network

    listed = subprocess.run(["iptables", "-w", "5", "-S", "INPUT"], capture_output=True, text=True).stdout.split()
    instances = {word.split("=", 1)[1].strip('"') for word in listed if word.startswith(("hearth-instance=",
                                                                                         '"hearth-instance='))}
    for instance in instances:
        if instance == settings.HEARTH_INSTANCE or instance.startswith(f"{settings.HEARTH_INSTANCE}-"):
            network.network_rules_remove(instance=instance)


@pytest.fixture(scope="session", autouse=True)
def _metrics_directory():
    """The run's own metrics directory (config/settings/test.py) goes at the end; the processes the tests start
    share it (the environment), as a deployment's web and worker processes do."""
    yield
    import shutil

    from django.conf import settings

    if "hearth-test-metrics-" in settings.PROMETHEUS_MULTIPROC_DIR:
        shutil.rmtree(settings.PROMETHEUS_MULTIPROC_DIR, ignore_errors=True)


@pytest.fixture(autouse=True)
def _isolated_paths(settings, tmp_path):
    settings.STORAGE_ROOT = tmp_path / "storage"
    settings.EXPORT_ROOT = tmp_path / "exports"
    yield
    if (tmp_path / "storage" / "volumes").exists() or (tmp_path / "storage" / "userns").exists():
        # An open mounted users' volumes (free their loop devices), or slots pinned their user namespaces.
        from workspaces import storage

        storage.slot_root_release(tmp_path / "storage" / "slots")
        storage.user_volumes_release(tenant_dir=tmp_path / "storage" / "tenants")


@pytest.fixture
def receiver():
    """A real OTLP/HTTP trace receiver on loopback for one test (tests/otlp_receiver.py)."""
    from tests.otlp_receiver import OtlpReceiver

    got = OtlpReceiver()
    yield got
    got.close()


@pytest.fixture
def user(db):
    return UserFactory()


@pytest.fixture
def tenant(db):
    return TenantFactory()


@pytest.fixture
def owner(tenant):
    return MembershipFactory(tenant=tenant, role="owner").user


def api_client_for(membership):
    from tenants.services import api_token_create

    _, plaintext = api_token_create(membership=membership, name="test", actor=membership.user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    return client


@pytest.fixture
def make_api_client(db):
    return api_client_for


# --- a real SMTP server on loopback (aiosmtpd): the tests read the mails Hearth sends -----------------


class Mailbox:
    """What the loopback SMTP server received, as parsed email messages."""

    def __init__(self):
        import threading

        self.messages = []
        self._arrived = threading.Condition()

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd handler hook
        from email import message_from_bytes
        from email.policy import default

        message = message_from_bytes(envelope.original_content or envelope.content, policy=default)
        with self._arrived:
            self.messages.append(message)
            self._arrived.notify_all()
        return "250 Message accepted for delivery"

    def clear(self):
        with self._arrived:
            self.messages.clear()

    def wait_for(self, *, to, subject_contains="", timeout=10.0):
        """The first message to `to` (whose subject contains the text); waits for it to arrive."""

        def found():
            return next((m for m in self.messages if to.lower() in str(m["To"]).lower()
                         and subject_contains.lower() in str(m["Subject"]).lower()), None)

        with self._arrived:
            if not self._arrived.wait_for(found, timeout=timeout):
                seen = [(str(m["To"]), str(m["Subject"])) for m in self.messages]
                raise AssertionError(f"no mail to {to} ({subject_contains!r}) within {timeout}s; got {seen}")
            return found()

    @staticmethod
    def body(message):
        part = message.get_body(preferencelist=("plain", "html"))
        return part.get_content() if part is not None else message.get_payload()

    def link_in(self, message, path_fragment):
        """The first http(s) URL in the mail's text that contains `path_fragment`."""
        import re

        for url in re.findall(r"https?://[^\s<>\"]+", self.body(message)):
            if path_fragment in url:
                return url
        raise AssertionError(f"no link containing {path_fragment!r} in:\n{self.body(message)}")


@pytest.fixture(scope="session")
def _smtp_controller():
    import socket

    from aiosmtpd.controller import Controller

    with socket.socket() as probe:  # a free port; aiosmtpd checks its server by connecting to it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    require_service("The aiosmtpd SMTP server", controller.start)
    yield controller, mailbox
    controller.stop()


@pytest.fixture
def smtp_server(_smtp_controller, settings):
    """Hearth's mail goes over SMTP to a real server on loopback; returns its Mailbox (empty at the start)."""
    controller, mailbox = _smtp_controller
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = controller.hostname
    settings.EMAIL_PORT = controller.port
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    mailbox.clear()
    return mailbox


# Transactional tests (live servers, real worker processes, concurrent claims) commit their rows and the
# database is flushed after each, which also removes what the migrations loaded (plans, templates, meters,
# the site). Every such test asks for a serialized rollback, and after it the data serialized at session
# start is put back, so tests that run later still find them.
def _is_transactional(item):
    names = getattr(item, "fixturenames", ())
    marker = item.get_closest_marker("django_db")
    return (
        "transactional_db" in names
        or "live_server" in names
        or bool(marker and marker.kwargs.get("transaction"))
    )


def pytest_collection_modifyitems(session, config, items):
    for item in items:
        if _is_transactional(item) and "django_db_serialized_rollback" not in item.fixturenames:
            item.fixturenames.append("django_db_serialized_rollback")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield  # after every fixture, the database flush included
    if "django_db_serialized_rollback" not in getattr(item, "fixturenames", ()):
        return
    from django.db import connections
    from pytest_django.plugin import blocking_manager_key

    with item.config.stash[blocking_manager_key].unblock():
        connection = connections["default"]
        contents = getattr(connection, "_test_serialized_contents", None)
        if contents:
            connection.creation.deserialize_db_from_string(contents)
    from metering.meters import meter_cache

    meter_cache.forget()  # the flush and the restore may give the seed meters new ids


# Seed data loaded by data migrations: (app label, model, migration module). Tests reload what is missing.
SEED_DATA = [
    ("tenants", "Plan", "tenants.migrations.0002_default_plans"),
    ("workspaces", "WorkspaceTemplate", "workspaces.migrations.0002_default_templates"),
    ("metering", "Meter", "metering.migrations.0002_default_meters"),
]


def seed_data_ensure():
    """Load the migrations' seed data (plans, templates, meters) that is missing, never a second copy.

    A reused test database can come back without it when an earlier run was stopped inside a transactional
    test (whose flush removes it before the snapshot is put back).
    """
    import importlib

    from django.apps import apps

    for app_label, model_name, migration in SEED_DATA:
        if not apps.get_model(app_label, model_name).objects.exists():
            importlib.import_module(migration).load(apps, None)


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """The seed data exists even in a reused test database, and the serialized snapshot includes it."""
    from django.db import connection

    with django_db_blocker.unblock():
        seed_data_ensure()
        if hasattr(connection, "_test_serialized_contents"):
            connection._test_serialized_contents = connection.creation.serialize_db_to_string()


# The runtime/storage fixtures (tiny image, Docker runtimes, a second dockerd, slots) for any workspaces test.
pytest_plugins = ["tests.workspaces.fixtures_runtime"]
