"""The real code-server image: hardened, late-bound home, serves its workbench with the user's settings."""
import json
import os
import time
import urllib.request

import pytest

from tests.workspaces.fixtures_runtime import CODE_SERVER_IMAGE, docker_exec
from workspaces import storage
from workspaces.pool import provisioning

pytestmark = [pytest.mark.docker, pytest.mark.slow]

# The user's own extension (a high-contrast theme) selected by the user's settings: both must take effect.
USER_SETTINGS = {"workbench.colorTheme": "Hearth HC Test", "workbench.startupEditor": "none"}
EXTENSION = {
    "name": "test-theme", "publisher": "hearth", "version": "0.0.1", "engines": {"vscode": "^1.60.0"},
    "contributes": {"themes": [{"label": "Hearth HC Test", "uiTheme": "hc-black", "path": "./theme.json"}]},
}


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
    ext = home / ".local/share/code-server/extensions/hearth.test-theme-0.0.1"
    ext.mkdir(parents=True)
    (ext / "package.json").write_text(json.dumps(EXTENSION))
    (ext / "theme.json").write_text(json.dumps({"name": "Hearth HC Test", "type": "hc", "colors": {}}))
    (home / "hello.py").write_text("print('hello')\n")
    for dirpath, _, files in os.walk(home):
        os.chown(dirpath, 1000, 1000)
        for f in files:
            os.chown(os.path.join(dirpath, f), 1000, 1000)
    return home


@pytest.mark.browser
@pytest.mark.parametrize("mode", ["warm", "wait"])
def test_code_server_serves_the_workbench_with_the_users_settings(
    make_container, docker_runtime, code_server_image, mode
):
    home = _home_with_settings()
    container, slot = make_container(
        image=code_server_image, cpus=1, memory_mb=1024, pids_limit=512, environment={"HEARTH_LATE_BIND": mode}
    )
    if mode == "warm":  # code-server already answers in the pool, before anyone's home is there
        assert docker_runtime.wait_ready(container, timeout=60, path="/healthz")
        provisioning._warm_up(container)  # as the pool does: the IDE's server starts before the user's home is bound
    else:  # nothing listens until the user's home is bound
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
    if mode == "wait":  # started after the bind: its own files are in the user's home
        assert (home / ".config/code-server/config.yaml").exists()
    code, out = docker_exec(docker_runtime, container.engine_id, "sh", "-c", "cd ~ && ls && touch /usr/x")
    assert "hello.py" in out and "Read-only file system" in out

    # The page itself, in Chromium: the workbench renders with the user's extension theme (the image's default is
    # dark), and the terminal runs a command whose output lands in the user's directory on the host.
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
                "() => /\\b(vs|vs-dark|hc-black)\\b/.test(document.querySelector('.monaco-workbench').className)",
                timeout=30_000,
            )
            page.wait_for_timeout(500)  # the extension's theme replaces the built-in one once extensions are read
            page.wait_for_function(
                "() => document.querySelector('.monaco-workbench').className.includes('hc-black')", timeout=30_000
            )
            page.keyboard.press("Control+Backquote")
            page.wait_for_selector(".xterm-helper-textarea", timeout=30_000)
            made = home / "from-terminal.txt"
            for _ in range(4):  # keys typed before the shell is attached may be lost: retype until it ran
                page.focus(".xterm-helper-textarea")
                page.keyboard.type("echo $((6*7)) > ~/from-terminal.txt\n")
                deadline = time.monotonic() + 5
                while not made.exists() and time.monotonic() < deadline:
                    time.sleep(0.1)
                if made.exists():
                    break
        finally:
            browser.close()
    assert made.read_text() == "42\n"
    print(f"bind -> /healthz {ready_after:.2f} s")


def test_first_open_gets_the_templates_defaults_in_warm_mode(make_container, docker_runtime, code_server_image):
    """Started before the bind, the entrypoint still seeds a new user's home with the template's settings."""
    container, slot = make_container(image=code_server_image, cpus=1, memory_mb=1024, pids_limit=512)
    assert docker_runtime.wait_ready(container, timeout=60, path="/healthz")
    home = storage.user_storage_path(tenant_slug="acme", user_id=2, workspace_id=2)
    storage.slot_bind(slot=slot, source=home)
    settings_file = home / ".local/share/code-server/User/settings.json"
    deadline = time.monotonic() + 10
    while not settings_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    _, defaults = docker_exec(docker_runtime, container.engine_id, "cat", "/etc/hearth/settings.json")
    assert json.loads(settings_file.read_text()) == json.loads(defaults)
    assert settings_file.stat().st_uid == 1000
    # Exactly one process tree: the seeding helper is gone and reaped (no zombie left under code-server).
    _, ps = docker_exec(docker_runtime, container.engine_id, "ps", "-eo", "stat,comm")
    assert not [line for line in ps.splitlines()[1:] if line.startswith("Z")], ps


@pytest.mark.parametrize("name", ["ai-builder", "web-app-builder"])
def test_derived_images_serve_and_seed_their_defaults(make_container, docker_runtime, code_server_image, name):
    from workspaces.images import image_ensure

    image = f"hearth/{name}:4.100.3"
    image_ensure(image, runtime=docker_runtime)  # seconds, FROM the code-server image
    container, slot = make_container(image=image, cpus=1, memory_mb=1024, pids_limit=512)
    assert docker_runtime.wait_ready(container, timeout=60, path="/healthz")
    home = storage.user_storage_path(tenant_slug="acme", user_id=3, workspace_id=name)
    storage.slot_bind(slot=slot, source=home)
    welcome = home / "WELCOME.md"
    deadline = time.monotonic() + 10
    while not welcome.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert name.split("-")[0] in welcome.read_text().lower()
    settings_file = home / ".local/share/code-server/User/settings.json"
    _, defaults = docker_exec(docker_runtime, container.engine_id, "cat", "/etc/hearth/settings.json")
    assert json.loads(settings_file.read_text()) == json.loads(defaults)
    _, env = docker_exec(docker_runtime, container.engine_id, "env")
    assert f"HEARTH_TEMPLATE={name}" in env
    tool = {"ai-builder": "python --version", "web-app-builder": "npm --version"}[name]
    code, out = docker_exec(docker_runtime, container.engine_id, "bash", "-lc", tool)
    assert code == 0, out
