"""Issue 12's chaos suite under pytest (`make chaos`, and part of `make test`): bench/chaos.py on a stack of its own.

The suite brings up its own PostgreSQL cluster, redis-server, dockerd, gateway, web, Celery worker and beat, and
kills or restarts only those (the machine's shared services serve other work). Its database is a copy of this
run's migrated test database (pg_dump: seconds, where migrating a fresh one takes minutes). Nothing is mocked.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection

from tests.conftest import require_service

REPO = Path(__file__).resolve().parents[2]


def _tools_present():
    missing = [tool for tool in ("dockerd", "redis-server", "haproxy", "pg_dump") if shutil.which(tool) is None]
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        missing.append("initdb")
    if missing or os.geteuid() != 0:
        raise RuntimeError(f"the chaos stack needs root and {missing or 'nothing else'}")


@pytest.mark.chaos
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.django_db  # this run's test database is set up (with its seed data): the stack's is a copy of it
def test_chaos_suite():
    require_service("the chaos stack's tools", _tools_present)
    params = connection.settings_dict
    source = f"postgres://{params['USER']}@{params['HOST']}:{params['PORT'] or 5432}/{params['NAME']}"
    done = subprocess.run([sys.executable, str(REPO / "bench/chaos.py"), "--seed-from", source], cwd=REPO,
                          capture_output=True, text=True, timeout=840)
    print(done.stderr[-6000:])
    print(done.stdout)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON line (exit {done.returncode}):\n{done.stderr[-4000:]}"
    report = json.loads(lines[-1])
    failed = {row["fault"]: row["failures"] for row in report["chaos"] if row["result"] != "PASS"}
    assert not failed, failed
    assert [row["fault"] for row in report["chaos"]] == ["web", "worker", "beat", "gateway", "events", "redis",
                                                         "postgres", "docker"]
    assert report["passed"] and done.returncode == 0
