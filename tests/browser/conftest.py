"""Real headless Chromium for the dashboard's browser tests (Debian's chromium, no downloads).

The browser is the system's (``CHROMIUM`` or the first of chromium / chromium-browser on
PATH); without one the tests skip and say why. CI installs it (.ci/run). Screenshots go to
``DASHBOARD_SCREENSHOTS`` when set, else to a temporary directory whose path is printed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def chromium_path() -> str | None:
    """The system Chromium to drive, or None."""
    given = os.environ.get("CHROMIUM")
    if given:
        return given if Path(given).exists() else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Chromium for the session."""
    sync_api = pytest.importorskip(
        "playwright.sync_api",
        reason="the browser tests need Playwright (pip install playwright)",
    )
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium found: apt-get install chromium (or set CHROMIUM)")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=path, headless=True, args=["--no-sandbox"]
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the screenshots go (printed, so a person can look at them)."""
    given = os.environ.get("DASHBOARD_SCREENSHOTS")
    path = Path(given) if given else tmp_path_factory.mktemp("dashboard-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    print(f"\ndashboard screenshots: {path}")
    return path
