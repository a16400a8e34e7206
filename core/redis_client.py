"""One Redis client per URL and process, for what Hearth keeps in Redis itself (not through Django's cache): the
pool's demand counts, the gateway's trace hand-over, the Celery queues read at each scrape. (The readiness check
connects afresh each time: it tests that a new connection works.) redis-py's pool notices a fork and opens new
connections in the child, so a client made before a fork (gunicorn, Celery's prefork) stays safe to use."""
from functools import cache

import redis
from django.conf import settings


@cache
def redis_client(url: str | None = None) -> redis.Redis:
    """The client for `url` (default REDIS_URL); short time-outs: every caller has a fallback when Redis is away."""
    return redis.Redis.from_url(url or settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
