"""Workspace images: build a missing one offline (scripts/images/*), for first starts and tests."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .runtime import DockerRuntime

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts" / "images"


class ImageBuildError(Exception):
    """An image could not be built (its build script failed; its output says why)."""


def image_ensure(name: str, *, runtime: DockerRuntime | None = None, timeout: float = 1800) -> bool:
    """Build the image `name` on the runtime's engine if it is missing; True if it had to be built.

    Progress goes to this process's stderr. Knows hearth/tiny, hearth/code-server, hearth/ai-builder and
    hearth/web-app-builder (scripts/images/ensure.sh); code-server takes a few minutes the first time.
    """
    if runtime is None:
        from django.conf import settings

        runtime = DockerRuntime(settings.DOCKER_HOST, node_name="local")
    if runtime.image_exists(name):
        return False
    env = {**os.environ, "DOCKER_HOST": runtime.url}
    done = subprocess.run([str(SCRIPTS / "ensure.sh"), name], env=env, timeout=timeout)
    if done.returncode != 0 or not runtime.image_exists(name):
        raise ImageBuildError(f"building {name} failed (exit {done.returncode}); run `make images` to see why")
    return True
