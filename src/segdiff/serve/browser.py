"""Headless Chromium driven by Selenium: the one set-up of the page tests (tests/test_serve.py) and of the
docs' screenshots (scripts/screenshots.py). Selenium is a dev dependency, imported only when a browser starts;
chromium and chromedriver come from the system (Debian: apt-get install chromium chromium-driver)."""

from __future__ import annotations

import shutil
import time

NOT_FOUND = "chromium and chromedriver not found (Debian: apt-get install chromium chromium-driver)"


def find_chromium() -> tuple[str, str] | None:
    """(browser, driver) executables on PATH, or None when either is missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def headless_chromium(width: int, height: int, extra_args: tuple[str, ...] = (), browser_log: bool = False):
    """A headless Chromium WebDriver with a width x height window; browser_log: keep the console log
    (driver.get_log("browser")). RuntimeError(NOT_FOUND) without chromium and chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = find_chromium()
    if found is None:
        raise RuntimeError(NOT_FOUND)
    opts = webdriver.ChromeOptions()
    opts.binary_location = found[0]
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", *extra_args):
        opts.add_argument(a)
    opts.add_argument(f"--window-size={width},{height}")
    if browser_log:
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=opts, service=Service(found[1]))


def wait_for(driver, script: str, timeout: float = 60.0, poll: float = 0.05):
    """Run `script` in the page until it returns a true value, and return that value (TimeoutError after
    `timeout` seconds)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for: {script}")
