"""The chaos suite's own stack (bench/chaos.py): every service and process is private to it, so it can be killed.

- PostgreSQL: a cluster of its own (`initdb` into a temp dir, own port and socket dir, run as the postgres OS user
  through `pg_ctl`); its schema is copied from a migrated database (`--seed-from`, what the test does: seconds)
  or made by `migrate` (minutes on a loaded 2-core machine);
- Redis: a `redis-server` of its own on its own port (no persistence: a restart loses queued tasks, as a real
  broker restart without AOF does);
- Docker: a dockerd of its own (`ExtraDockerd` of the tests: own socket, data root, exec root, bridge, subnet;
  the tiny image imported into it once);
- Hearth's five processes, each a child whose pid the suite knows: web (gunicorn, config of
  scripts/serve-web.sh with fewer workers), Celery worker, Celery beat, gateway (`manage.py gateway`), the
  engine-event follower (`manage.py engine_events`).

The suite plays the supervisor (docs/systemd: `Restart=always`, `RestartSec=1`, and systemd's default
`KillMode=control-group`): when a process is SIGKILLed, what is left of its process group (gunicorn's workers,
HAProxy under the gateway, the worker's pool children) is killed too, and the process is started again 1 s later.
The machine's shared PostgreSQL, Redis and dockerd are never touched.
"""
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.workspaces.dockerd import ExtraDockerd

ROOT = Path(__file__).resolve().parent.parent
PG_BIN = Path("/usr/lib/postgresql")
RESTART_SEC = 1.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin(name):
    versions = sorted((p for p in PG_BIN.glob("*/bin") if (p / name).exists()), key=lambda p: int(p.parent.name))
    if not versions:
        raise RuntimeError(f"PostgreSQL's {name} is missing (apt-get install postgresql)")
    return str(versions[-1] / name)


def _wait(check, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up within {timeout:.0f} s")
        time.sleep(0.1)


def _tcp_open(port):
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


class Postgres:
    """A private cluster run by the postgres OS user (PostgreSQL refuses to run as root)."""

    def __init__(self, root):
        self.root = Path(root) / "pg"
        self.data, self.sock = self.root / "data", self.root / "sock"
        self.port = free_port()
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/hearth"

    def _as_postgres(self, *argv, **kwargs):
        run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run([*run_as, *argv], check=True, capture_output=True, cwd="/", **kwargs)

    def start(self):
        if not self.data.exists():
            self.sock.mkdir(parents=True)
            if os.geteuid() == 0:
                shutil.chown(self.root, "postgres")
                shutil.chown(self.sock, "postgres")
            self._as_postgres(_pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                              "-E", "UTF8", "--no-sync")
        options = (f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c full_page_writes=off -c max_connections=200")
        self._as_postgres(_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.root / "postgres.log"), "-w",
                          "-t", "60", "-o", options, "start")

    def stop(self, mode="fast"):
        if self.data.exists():
            try:
                self._as_postgres(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
            except subprocess.CalledProcessError:
                pass  # not running

    def restart(self):
        """`pg_ctl restart -m fast`: every connection is cut, as `systemctl restart postgresql` does."""
        self.stop()
        self.start()

    def create_database(self, seed_from=None):
        psql = [_pg_bin("psql"), "-X", "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"]
        subprocess.run([*psql, "-c", "CREATE DATABASE hearth"], check=True, capture_output=True)
        if seed_from:
            dump = subprocess.Popen([_pg_bin("pg_dump"), "--no-owner", "--no-privileges", seed_from],
                                    stdout=subprocess.PIPE)
            subprocess.run([*psql, "-v", "ON_ERROR_STOP=1", "-d", "hearth"], stdin=dump.stdout, check=True,
                           capture_output=True)
            if dump.wait() != 0:
                raise RuntimeError(f"pg_dump of {seed_from} failed")


class Redis:
    def __init__(self, root):
        self.root = Path(root)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(self.root), "--logfile", str(self.root / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        _wait(lambda: _tcp_open(self.port), 10, "redis-server")

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def restart(self):
        self.stop()
        self.start()


class Supervised:
    """One of Hearth's processes, started in its own process group; `kill()` is the fault, `restart()` the
    supervisor's answer (the group's leftovers killed, RestartSec, started again, ready)."""

    def __init__(self, name, argv, env, log_dir, ready):
        self.name, self.argv, self.env, self.ready = name, argv, env, ready
        self.log_path = Path(log_dir) / f"{name}.log"
        self._log_start = 0  # where this start's lines begin (ready checks read only those)
        self.proc = None
        self.lock = threading.Lock()  # a fault and the watchdog's restart never overlap
        self.crashes = 0  # exits nobody asked for, restarted by the watchdog (systemd's Restart=always)

    @property
    def pid(self):
        return self.proc.pid

    def start(self, timeout=90):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); see {self.log_path}")
            return self.ready(self)

        deadline = time.monotonic() + timeout
        while not _try(ready):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); see {self.log_path}: "
                                   f"{self.log_path.read_text(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready within {timeout} s; see {self.log_path}")
            time.sleep(0.1)

    def kill(self):
        """The fault: SIGKILL to the process's pid (only; its children are the supervisor's business)."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def _kill_group(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 10
        while _group_alive(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def restart(self):
        self._kill_group()
        time.sleep(RESTART_SEC)
        self.start()

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None:
                self._kill_group()
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        self._kill_group()
        self.proc.wait()


def _try(check):
    try:
        return check()
    except RuntimeError:
        raise
    except Exception:
        return False


def _group_alive(pgid):
    alive = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[2]) == pgid:
                alive.append(int(entry.name))
    return alive


def _http_ok(port, path="/healthz"):
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
        return response.status == 200


def _log_says(text):
    return lambda proc: text in proc.log_path.read_text(errors="replace")[proc._log_start:]


class Stack:
    """Everything private, started in order; `close()` takes it all down (also after a failure half-way)."""

    def __init__(self, instance, root):
        self.instance, self.root = instance, Path(root)
        self.postgres, self.redis = Postgres(self.root), Redis(self.root)
        self.dockerd = ExtraDockerd(f"{self.instance}-d")
        self._dockerd_started = False
        self.web_port, self.gateway_port = free_port(), free_port()
        self.processes = {}
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "DJANGO_"))},
            "DJANGO_SETTINGS_MODULE": "config.settings.base",
            "DATABASE_URL": self.postgres.url,
            "REDIS_URL": self.redis.url,
            "DOCKER_HOST": self.dockerd.url,
            "HEARTH_NETWORK_SUBNETS": f"{self.dockerd.url}={self.dockerd.subnet}",
            # The private engine runs with --iptables=false (ExtraDockerd): no firewall chains to install on it;
            # isolation is tested on the main engine (tests/workspaces/test_network_policy.py).
            "HEARTH_NETWORK_POLICY": "false",
            "HEARTH_INSTANCE": self.instance,
            "STORAGE_ROOT": str(self.root / "storage"),
            "GATEWAY_RUN_DIR": str(self.root / "gw"),
            "GATEWAY_HOST": "localhost",
            "GATEWAY_JWT_KEYS": f"chaos:{secrets.token_urlsafe(32)}",
            "HEARTH_PORT": str(self.web_port),
            "HEARTH_GATEWAY_PORT": str(self.gateway_port),
            "HEARTH_BASE_URL": f"http://127.0.0.1:{self.web_port}",
            # An open answers (503 pool_busy) before the load's client gives up on it (OPEN_TIMEOUT).
            "WORKSPACES_COLD_START_WAIT": "10",
            "HEARTH_DOCKER_TIMEOUT": "8",
            "WORKSPACES_READY_TIMEOUT": "10",
            "LOG_LEVEL": "WARNING",
        }

    def start_services(self, seed_from=None):
        """PostgreSQL (its database copied from `seed_from`, else empty), Redis, dockerd; Django must be set up
        on `self.env` first (the dockerd's probe is Hearth's DockerRuntime)."""
        self.postgres.start()
        self.postgres.create_database(seed_from)
        self.redis.start()
        self.dockerd.remove_bridge()
        self._dockerd_started = True
        self.dockerd.start()

    def start_processes(self):
        py = sys.executable
        celery = [py, "-m", "celery", "-A", "config"]
        specs = {
            "web": ([py, "-m", "gunicorn", "config.wsgi:application", "-c", "config/gunicorn.py",
                     "--bind", f"127.0.0.1:{self.web_port}",
                     "--workers", "2", "--threads", "4", "--error-logfile", "-", "--log-level", "warning"],
                    lambda p: _http_ok(self.web_port)),
            "worker": ([*celery, "worker", "-c", "2", "-l", "INFO", "--without-heartbeat", "--without-gossip",
                        "--without-mingle", "-n", f"{self.instance}@%h"], _log_says(" ready.")),
            "beat": ([*celery, "beat", "-l", "INFO", "--schedule", str(self.root / "beat-schedule")],
                     _log_says("beat: Starting")),
            "gateway": ([py, "manage.py", "gateway"], lambda p: _tcp_open(self.gateway_port)),
            # The engine-event follower: a dead container's session ends at once, and after the engine's restart it
            # reconciles the node as soon as the engine answers (not at the reconciler's next tick).
            "events": ([py, "-u", "manage.py", "engine_events"], _log_says("engine events: following")),
        }
        for name, (argv, ready) in specs.items():
            proc = Supervised(name, argv, self.env, self.root, ready)
            self.processes[name] = proc
            proc.start()

    def restart_process(self, name):
        proc = self.processes[name]
        proc._log_start = proc.log_path.stat().st_size if proc.log_path.exists() else 0
        proc.restart()

    def kill_and_restart(self, name):
        """The fault on a process and the supervisor's answer, with the watchdog held off."""
        proc = self.processes[name]
        with proc.lock:
            proc.kill()
            self.restart_process(name)

    def watchdog_start(self):
        """Play systemd's Restart=always for exits nobody caused (a process that dies of another fault): restarted
        1 s later and counted in `crashes`, which the table reports."""
        self._watching = True

        def watch():
            while self._watching:
                for name, proc in list(self.processes.items()):
                    if proc.proc is None or proc.proc.poll() is None or not proc.lock.acquire(blocking=False):
                        continue
                    try:
                        if self._watching and proc.proc.poll() is not None:
                            proc.crashes += 1
                            print(f"[chaos] {name} exited by itself ({proc.proc.returncode}); restarting it",
                                  file=sys.stderr, flush=True)
                            try:
                                self.restart_process(name)
                            except Exception as exc:  # the next round tries again
                                print(f"[chaos] {name} did not restart: {exc}", file=sys.stderr, flush=True)
                    finally:
                        proc.lock.release()
                time.sleep(0.5)

        self._watcher = threading.Thread(target=watch, name="chaos-watchdog", daemon=True)
        self._watcher.start()

    def watchdog_stop(self):
        self._watching = False
        if getattr(self, "_watcher", None) is not None:
            self._watcher.join(timeout=120)

    def close(self):
        self.watchdog_stop()
        errors = []
        for proc in self.processes.values():
            _collect(errors, proc.stop)
        if self._dockerd_started:
            _collect(errors, self._engine_cleanup)
            _collect(errors, self.dockerd.stop)
            _collect(errors, self.dockerd.remove_bridge)
        _collect(errors, self.redis.stop)
        _collect(errors, lambda: self.postgres.stop("immediate"))
        _collect(errors, self._storage_release)
        _collect(errors, self._logs_keep)
        shutil.rmtree(self.root, ignore_errors=True)
        return errors

    def _logs_keep(self):
        """Every process's log to var/artifacts/chaos/ (the run's temp dir goes): what to read when a fault fails."""
        keep = ROOT / "var" / "artifacts" / "chaos"
        shutil.rmtree(keep, ignore_errors=True)
        keep.mkdir(parents=True)
        for log in [*self.root.glob("*.log"), self.root / "pg" / "postgres.log", Path(f"/tmp/{self.dockerd.name}.log")]:
            if log.exists():
                shutil.copy(log, keep / log.name)

    def _engine_cleanup(self):
        from workspaces.runtime import DockerRuntime

        runtime = DockerRuntime(self.dockerd.url, node_name="chaos-cleanup", timeout=20)
        try:
            for c in runtime.list(instance=self.instance):
                runtime.remove(c.engine_id)
            for net in runtime.api.networks(names=[runtime.network]):
                runtime.api.remove_network(net["Id"])
        finally:
            runtime.close()

    def _storage_release(self):
        from workspaces import storage

        storage_root = self.root / "storage"
        if (storage_root / "slots").exists():
            storage.slot_root_release(storage_root / "slots")
        if (storage_root / "tenants").exists():
            storage.user_volumes_release(tenant_dir=storage_root / "tenants")


def _collect(errors, step):
    try:
        step()
    except Exception as exc:  # teardown goes on: everything else must still go
        errors.append(f"{getattr(step, '__name__', step)}: {type(exc).__name__}: {exc}")
