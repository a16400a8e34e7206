"""gunicorn's settings for the web process (scripts/serve-web.sh -c config/gunicorn.py): the bookkeeping of the
metrics' multiprocess directory (core/metrics.py). Workers, threads and the address stay on the command line."""
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")


def on_starting(server):
    # The settings set PROMETHEUS_MULTIPROC_DIR; the workers, forked from here, inherit it.
    from django.conf import settings

    settings.PROMETHEUS_MULTIPROC_DIR  # noqa: B018
    from core.metrics import multiprocess_dir_prepare

    removed = multiprocess_dir_prepare()
    server.log.info("metrics: %s (%d files of ended processes removed)", os.environ["PROMETHEUS_MULTIPROC_DIR"],
                    removed)


def child_exit(server, worker):
    from core.metrics import process_dead

    process_dead(worker.pid)
