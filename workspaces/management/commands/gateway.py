"""`manage.py gateway`: render the HAProxy configuration and run the gateway in the foreground."""
import signal
import subprocess

from django.core.management.base import BaseCommand, CommandError

from core.telemetry import telemetry_setup
from workspaces.gateway.process import GatewayProcess, gateway_keys_rotate, gateway_reload, routes_source_from_settings


class Command(BaseCommand):
    help = "Run the gateway (HAProxy, master-worker) in the foreground; SIGHUP re-renders and reloads hitlessly."

    def add_arguments(self, parser):
        parser.add_argument("--reload", action="store_true", help="reload the running gateway and exit")
        parser.add_argument("--rotate-key", action="store_true",
                            help="rotate the per-install JWT key on the running gateway and exit")

    def handle(self, *args, reload=False, rotate_key=False, **options):
        telemetry_setup(process="gateway")
        source = routes_source_from_settings()
        if reload:
            gateway_reload(routes_source=source)
            self.stdout.write("gateway reloaded")
            return
        if rotate_key:
            kid = gateway_keys_rotate(routes_source=source)
            self.stdout.write(f"gateway key rotated; new kid {kid}")
            return
        process = GatewayProcess(routes_source=source)
        pending = []

        def on_hup(signum, frame):
            pending.append("reload")

        def on_term(signum, frame):
            pending.append("stop")

        signal.signal(signal.SIGHUP, on_hup)
        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        try:
            process.start()
            self.stdout.write(f"gateway: HAProxy on port {process.cfg.port}, run dir {process.cfg.run_dir}")
            while process.proc.poll() is None:
                if "stop" in pending:
                    break
                if "reload" in pending:
                    pending.clear()
                    try:
                        process.reload()
                        self.stdout.write("gateway reloaded")
                    except Exception as exc:  # a bad config keeps the old workers serving
                        self.stderr.write(f"gateway reload failed: {exc}")
                try:
                    process.proc.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            process.stop()
        if "stop" not in pending:
            raise CommandError(f"haproxy exited with status {process.proc.returncode}")
