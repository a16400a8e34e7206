"""The open's request-path cost of the Internet grant: before, one iptables-restore exec (network.egress_grant) in
the open; now, the hand-over to the granter thread (a context copy and a queue put). Alternated, N of each, on chains
of a throw-away instance (`<HEARTH_INSTANCE>-micro`, removed at the end); needs root and iptables.

    .venv/bin/python bench/egress_grant_handover.py [N]
"""
import contextvars
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")
import django  # noqa: E402

django.setup()
from core.background import BackgroundQueue  # noqa: E402
from workspaces import network  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 60
instance = os.environ.get("HEARTH_INSTANCE", "hearth") + "-micro"
network.network_rules_ensure(instance=instance, bridge="hgmicro0")
queue = BackgroundQueue("micro", lambda batch: None)
before, after = [], []
try:
    for i in range(N):
        ip = f"172.31.254.{i % 250 + 1}"
        t = time.perf_counter()
        network.egress_grant(instance=instance, ip=ip, internet_access="open")
        before.append(time.perf_counter() - t)
        network.egress_close(instance=instance, ip=ip)
        t = time.perf_counter()
        queue.put((ip, contextvars.copy_context()))
        after.append(time.perf_counter() - t)
        queue.wait_idle(5)
finally:
    network.network_rules_remove(instance=instance)


def q(xs, p):
    return sorted(xs)[min(len(xs) - 1, int(p * len(xs)))] * 1000


print(f"n={N} load={os.getloadavg()[0]:.1f}")
print(f"before (egress_grant exec): p50 {q(before, .5):.2f} ms, p90 {q(before, .9):.2f} ms")
print(f"after  (hand-over):         p50 {q(after, .5)*1000:.1f} us, p90 {q(after, .9)*1000:.1f} us")
