"""A real headless browser for tests that look at a page as a person would: Debian's chromium driven through
its chromium-driver by Selenium (nothing is downloaded; `make setup` installs both packages). Chromium
starts with a fresh profile and without its background network traffic, so a page that needs the
internet shows what it shows offline."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def why_unavailable() -> str | None:
    """None when the browser can be started here, else the reason (for the skip message)."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        return f"browser tests skipped: {', '.join(missing)} not found (install Debian's chromium and chromium-driver; make setup does)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "browser tests skipped: selenium is not installed (pip install selenium)"
    return None


class Browser:
    """One headless Chromium; `driver` is Selenium's WebDriver."""

    def __init__(self) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = Path(tempfile.mkdtemp(prefix="encsteal-chromium-"))
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--no-first-run", "--window-size=1280,2000", f"--user-data-dir={self.profile}"):
            options.add_argument(flag)
        self.driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
        self.driver.set_page_load_timeout(60)

    def resources(self) -> list[str]:
        """URLs of every resource the current page loaded (scripts, styles, images, fetches)."""
        return self.driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)
