"""Shared fixtures of the UI tests: the studio app on loopback, Chromium through Playwright, screenshots.

- ``launch_studio(studio) -> url``: the app as :func:`studio.ui.launch.launch` serves it,
  on a free loopback port, closed at the end of the module;
- ``browser``: Debian's Chromium driven by Playwright (module scope);
- ``screenshots``: a folder for the tests' screenshots, and ``screenshot(page, name)``
  which saves one there and checks that it is not blank.

Plain helpers (free ports, the Chromium flags, a non-blank check) live in ``pagekit``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pagekit import CHROMIUM, CHROMIUM_ARGS, assert_not_blank, free_port


def launch_app(studio, port: int, **options):
    """``studio.ui.launch.launch`` on loopback; returns the Gradio app (close it with ``app.close()``)."""
    from studio.ui.launch import launch

    _, app = launch(studio, host="127.0.0.1", port=port, prevent_thread_lock=True, **options)
    return app


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is not installed: run `make browser` (the README's test command does).")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory):
    """The screenshots' folder: ``$STUDIO_SCREENSHOTS`` when set (kept), else a fresh temporary one."""
    folder = os.environ.get("STUDIO_SCREENSHOTS")
    if folder:
        path = Path(folder).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def launch_studio():
    """``launch_studio(studio) -> url``: serve ``studio`` on loopback until the module ends."""
    apps = []

    def _launch(studio, **options) -> str:
        port = free_port()
        apps.append(launch_app(studio, port, **options))
        return f"http://127.0.0.1:{port}/"

    yield _launch
    for app in apps:
        app.close()


@pytest.fixture(scope="module")
def screenshot(screenshots):
    """``screenshot(page, name)``: a full-page screenshot in ``screenshots``, checked not blank."""

    def _shoot(page, name: str):
        path = screenshots / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        assert_not_blank(path)
        return path

    return _shoot
