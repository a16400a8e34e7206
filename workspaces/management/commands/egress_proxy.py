"""`manage.py egress_proxy`: install the firewall rules, write tinyproxy's configuration and run both proxies."""
import signal
import time

from django.core.management.base import BaseCommand, CommandError

from workspaces.egress_proxy import EgressProxyError, egress_proxy_from_settings
from workspaces.runtime import RuntimeError_, RuntimeUnavailable


class Command(BaseCommand):
    help = ("Run the workspaces' egress proxy (tinyproxy: the allow-list one and the open plans' one) in the "
            "foreground; SIGHUP re-reads the local bridges' subnets (a changed EGRESS_PROXY_ALLOW needs a restart).")

    def handle(self, *args, **options):
        try:
            proxy = egress_proxy_from_settings()
            proxy.start()
        except (EgressProxyError, RuntimeError_, RuntimeUnavailable) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"egress proxy: allow-list on port {proxy.port}, open plans' on {proxy.port + 1}, for "
                          f"{', '.join(proxy.subnets) or 'no bridge yet'}; {len(proxy.allow)} allowed hosts")
        pending = []
        signal.signal(signal.SIGHUP, lambda signum, frame: pending.append("reload"))
        signal.signal(signal.SIGTERM, lambda signum, frame: pending.append("stop"))
        signal.signal(signal.SIGINT, lambda signum, frame: pending.append("stop"))
        try:
            while (dead := proxy.exited()) is None and "stop" not in pending:
                if "reload" in pending:
                    pending.clear()
                    try:
                        fresh = egress_proxy_from_settings()
                        proxy.subnets, proxy.allow = fresh.subnets, fresh.allow
                        proxy.reload()
                        self.stdout.write("egress proxy reloaded")
                    except Exception as exc:  # a bad allow-list keeps the running proxies as they were
                        self.stderr.write(f"egress proxy reload failed: {exc}")
                time.sleep(0.5)
        finally:
            proxy.stop()
        if dead is not None:
            raise CommandError(f"tinyproxy exited with status {dead.returncode}")
