"""Named crash points for the crash-safety tests; inert unless the HEARTH_FAILPOINT environment variable names one.

A test starts a real process (Celery worker, `manage.py shell`) with `HEARTH_FAILPOINT=<name>` and
`HEARTH_FAILPOINT_FILE=<path>`: when that process reaches `failpoint("<name>")` it writes its pid to the file and
hangs, so the test can SIGKILL it at exactly that moment (tests/workspaces/test_pool_crash.py), or let it go on by
removing the file (a race held open: tests/workspaces/test_egress_access.py). Points:

- `provision.reserved`  PROVISIONING row committed; no slot, no engine container yet
- `provision.created`   engine container created; its id not yet saved on the row
- `provision.started`   engine container running and answering; row still PROVISIONING
- `provision.handed`    cold start only: started (ready_at set), not yet claimed by the open that asked for it
- `open.claimed`        claim committed (container CLAIMED, session live); storage not bound
- `open.bound`          user storage bound onto the slot; no gateway route, no token yet
- `release.committed`   session ended and container RELEASING committed; route, bind, engine container still there
- `egress.locked`       the Internet grant after an open holds its live session's row lock; nothing granted yet
"""
import logging
import os
import time

# Read once at import: an unarmed check is one string comparison (it sits on the open path).
_ARMED = os.environ.get("HEARTH_FAILPOINT", "")
if _ARMED:
    logging.getLogger(__name__).warning("HEARTH_FAILPOINT=%s: this process hangs when it gets there (tests only)",
                                        _ARMED)


def failpoint(name):
    """Hang here (after writing this pid to HEARTH_FAILPOINT_FILE) if HEARTH_FAILPOINT == name, until that file is
    removed; for good without one."""
    if _ARMED != name:
        return
    marker = os.environ.get("HEARTH_FAILPOINT_FILE")
    if marker:
        with open(f"{marker}.tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(f"{marker}.tmp", marker)
    while not marker or os.path.exists(marker):
        time.sleep(0.02 if marker else 3600)
