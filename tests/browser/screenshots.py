"""Screenshots the browser tests keep as artifacts (what each page looked like). They are
not what a test checks, so a renderer too busy to capture one on a loaded machine is given
a moment and asked again rather than failing the test."""

from __future__ import annotations

import time
from pathlib import Path

from playwright.sync_api import Error, Page


def save(page: Page, path: Path, attempts: int = 4) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    page.wait_for_load_state()  # figures and previews drawn before the shot
    for attempt in range(attempts):
        try:
            page.screenshot(path=str(path), full_page=True)
            return
        except Error as exc:
            if "Unable to capture screenshot" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(1 + attempt)
