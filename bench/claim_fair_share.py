"""What the fair-share condition adds to the claim statement: the same statement with and without it, on rows only
(no engine), every claim rolled back; prepared, as the open runs it (config.db.fetchone).

    DATABASE_URL=postgres://…/<a migrated database> .venv/bin/python bench/claim_fair_share.py [--warm 200]
        [--sessions 8] [--claims 200] [--rounds 6]

Makes a tenant with `--sessions` live sessions on one node and `--warm` WARM rows there, then alternates rounds of
`--claims` claims with and without `AND c.node_id NOT IN (<the nodes where the tenant is at its share>)`; prints p50
and p99 of each and their p50 ratio. Everything is made inside one transaction that is rolled back at the end.
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm", type=int, default=200)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--claims", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()

    import django

    django.setup()
    from django.db import connection, transaction
    from django.utils import timezone

    from config import db
    from tenants.models import Plan, Tenant, User
    from workspaces.models import Container, Node, Session, Workspace, WorkspaceTemplate
    from workspaces.pool import claim, placement

    condition = f"AND c.node_id NOT IN ({placement.FAIR_SHARE_FULL_NODES_SQL})"
    plain_sql = claim._CLAIM_SQL.replace(condition, "")
    assert plain_sql != claim._CLAIM_SQL, "the claim statement no longer has the fair-share condition"
    with transaction.atomic():
        plan = Plan.objects.create(slug="bench-fair-share", name="bench")
        tenant = Tenant.objects.create(slug="bench-fair-share", name="bench", plan=plan)
        user = User.objects.create(email="bench-fair-share@example.test")
        template = WorkspaceTemplate.objects.create(slug="bench-fair-share", name="bench", image="none",
                                                    internal_port=1, cpus="0.1", memory_mb=64, pids_limit=64,
                                                    warm_min=0, warm_max=0, max_containers=100_000)
        node = Node.objects.create(name="bench-fair-share", engine_url="unix:///nonexistent", cpus=64,
                                   memory_mb=65536, max_containers=100_000)
        now = timezone.now()
        for i in range(args.sessions):
            container = Container.objects.create(node=node, template=template, state="claimed")
            workspace = Workspace.objects.create(tenant=tenant, owner=user, name=f"w{i}", template=template,
                                                 host_key=f"benchfairshare{i}")
            Session.objects.create(tenant=tenant, workspace=workspace, user=user, container=container,
                                   started_at=now, last_activity_at=now)
        Container.objects.bulk_create([Container(node=node, template=template, state="warm")
                                       for _ in range(args.warm)])
        with connection.cursor() as cursor:  # plans for these rows, as on a database in use
            for model in (Container, Session, Node, WorkspaceTemplate):
                cursor.execute(f"ANALYZE {model._meta.db_table}")
        arms = {"plain": (plain_sql, [now, now, template.pk]),
                "fair_share": (claim._CLAIM_SQL, claim._claim_params(template, tenant.pk, now))}
        times = {name: [] for name in arms}
        for _ in range(args.rounds):
            for name, (sql, params) in arms.items():
                for _ in range(args.claims):
                    savepoint = transaction.savepoint()
                    started = time.perf_counter()
                    assert db.fetchone(sql, params) is not None  # prepared, as the open runs it
                    times[name].append(time.perf_counter() - started)
                    transaction.savepoint_rollback(savepoint)
        transaction.set_rollback(True)
    for name, values in times.items():
        values.sort()
        print(f"{name:10} p50 {statistics.median(values) * 1000:.3f} ms  p99 "
              f"{values[int(len(values) * 0.99)] * 1000:.3f} ms  n={len(values)}")
    ratio = statistics.median(times["fair_share"]) / statistics.median(times["plain"])
    print(f"p50 ratio fair_share/plain: {ratio:.2f}")


if __name__ == "__main__":
    main()
