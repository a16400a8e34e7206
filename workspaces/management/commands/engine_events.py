"""`manage.py engine_events`: follow every enabled node's engine (events and heartbeat) until SIGTERM."""
import signal
import threading

from django.core.management.base import BaseCommand

from core.telemetry import telemetry_setup
from workspaces.engine_events import Followers


class Command(BaseCommand):
    help = ("Follow every enabled node's Docker events (a dead container's session ends at once) and ping each "
            "engine (the node's heartbeat). Run one or more anywhere: one follower per node holds its lock, "
            "the others stand by.")

    def handle(self, *args, **options):
        telemetry_setup(process="engine-events")
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        followers = Followers()
        self.stdout.write(f"engine events: following every enabled node (heartbeat {followers.heartbeat:g} s)")
        followers.run(stop)
