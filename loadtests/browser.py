"""Headless Chromium for the console's browser tests and screenshots, driven by Playwright.

The browser is Debian's ``chromium`` package (``make system-deps`` installs it), never one that
Playwright downloads: this machine reaches package registries only. The flags keep it off the
network (no component updates, sync, field trials or QUIC) and away from a GPU, with a new empty
profile each time.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


class ChromiumMissing(RuntimeError):
    pass


def chromium_path() -> str:
    """Debian's chromium: $CHROMIUM, else /usr/bin/chromium, else `chromium` on the PATH."""
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise ChromiumMissing(
        "Chromium was not found (looked at $CHROMIUM, /usr/bin/chromium and the PATH). Install "
        "Debian's package: `make system-deps` (or `apt-get install chromium`).")


@contextmanager
def chromium(viewport: tuple[int, int] = (1400, 900), scale: float = 1.0
             ) -> Iterator[BrowserContext]:
    """A browser context on a fresh, empty profile (removed afterwards)."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with tempfile.TemporaryDirectory(prefix="slm-chromium-") as profile, \
            sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=executable, args=CHROMIUM_FLAGS, headless=True,
            viewport={"width": viewport[0], "height": viewport[1]}, device_scale_factor=scale,
        )
        try:
            yield context
        finally:
            context.close()
