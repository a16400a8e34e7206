"""The real code-server image: hardened, late-bound home, serves its workbench with the user's settings."""
import json
import os
import time
import urllib.request

import pytest

from tests.workspaces.fixtures_runtime import CODE_SERVER_IMAGE, docker_exec
from workspaces import storage

pytestmark = [pytest.mark.docker, pytest.mark.slow]

USER_SETTINGS = {"workbench.colorTheme": "Default Light Modern", "editor.fontSize": 19}


@pytest.fixture(scope="session")
def code_server_image(docker_runtime):
    from workspaces.images import image_ensure

    image_ensure(CODE_SERVER_IMAGE, runtime=docker_runtime)  # a few minutes the first time, then cached
    return CODE_SERVER_IMAGE


def _home_with_settings():
    home = storage.user_storage_path(tenant_slug="acme", user_id=1, workspace_id=1)
    user_dir = home / ".local/share/code-server/User"
    user_dir.mkdir(parents=True)
    (user_dir / "settings.json").write_text(json.dumps(USER_SETTINGS))
    (home / "hello.py").write_text("print('hello')\n")
    for dirpath, _, files in os.walk(home):
        os.chown(dirpath, 1000, 1000)
        for f in files:
            os.chown(os.path.join(dirpath, f), 1000, 1000)
    return home


def test_code_server_serves_the_workbench_with_the_users_settings(make_container, docker_runtime, code_server_image):
    home = _home_with_settings()
    container, slot = make_container(image=code_server_image, cpus=1, memory_mb=1024, pids_limit=512)
    # Warm and waiting: nothing listens until the user's home is bound.
    assert not docker_runtime.wait_ready(container, timeout=1.0)

    bound_at = time.monotonic()
    storage.slot_bind(slot=slot, source=home)
    assert docker_runtime.wait_ready(container, timeout=60, path="/healthz")
    ready_after = time.monotonic() - bound_at
    with urllib.request.urlopen(f"http://{container.address}/healthz", timeout=5) as response:
        assert response.status == 200
    with urllib.request.urlopen(f"http://{container.address}/", timeout=30) as response:
        html = response.read().decode()
        assert response.status == 200 and "folder=/home/coder" in response.url
    assert "workbench" in html and "vscode" in html.lower()

    # Its user data lives in the bound home: the user's settings were kept, not replaced by the defaults.
    assert json.loads((home / ".local/share/code-server/User/settings.json").read_text()) == USER_SETTINGS
    logs = docker_runtime.api.logs(container.engine_id).decode()
    assert "Using user-data-dir /home/coder/.local/share/code-server" in logs
    code, out = docker_exec(docker_runtime, container.engine_id, "sh", "-c", "cd ~ && ls && touch /usr/x")
    assert "hello.py" in out and "Read-only file system" in out

    # The page itself, in Chromium: the workbench renders with the user's (light) theme, not the image's dark one.
    from playwright.sync_api import sync_playwright

    origin = f"http://{container.address}"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", f"--unsafely-treat-insecure-origin-as-secure={origin}"],
        )
        try:
            page = browser.new_page()
            page.goto(origin + "/", timeout=60_000)
            page.wait_for_selector(".monaco-workbench", timeout=60_000)
            page.wait_for_function(
                "() => /\\bvs\\b|vs-dark/.test(document.querySelector('.monaco-workbench').className)", timeout=30_000
            )
            classes = page.eval_on_selector(".monaco-workbench", "e => e.className").split()
        finally:
            browser.close()
    assert "vs" in classes and "vs-dark" not in classes, classes
    print(f"bind -> /healthz {ready_after:.2f} s")
