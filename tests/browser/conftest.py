"""Browser checks (``@pytest.mark.browser``) drive the Prefect UI with Playwright and Debian's
Chromium. They start their own Prefect stack and take minutes, so they run only when asked:
``make ui-check`` (which sets ``CUTOVER_BROWSER=1``). An explicit ``-m`` still selects among them."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config, items):
    if os.environ.get("CUTOVER_BROWSER") == "1":
        return
    skip = pytest.mark.skip(reason="browser check: run `make ui-check` (or set CUTOVER_BROWSER=1)")
    for item in items:
        if item.get_closest_marker("browser"):
            item.add_marker(skip)
