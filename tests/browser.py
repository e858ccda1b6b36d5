"""The search page's browser tests: Debian's Chromium driven by Playwright, or a skip saying what is missing."""

from __future__ import annotations

import os

import pytest

CHROMIUM = "/usr/bin/chromium"


def browser_or_skip():
    """Playwright's ``sync_playwright``, or skip the test when Chromium or Playwright is absent."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent (Debian: apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright Python package is not installed (pip install playwright)")
    return sync_playwright


#: flags for a quiet, offline, headless Chromium that plays media without a click
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required"]


def launch(playwright, profile, width: int = 1100, height: int = 760):
    """Chromium with a fresh profile folder (Playwright passes it as ``--user-data-dir``), ``width`` x ``height``."""
    return playwright.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, headless=True,
                                                         args=ARGS, viewport={"width": width, "height": height})
