"""Headless Debian chromium for the hub's page tests, driven by selenium through chromedriver."""

import os
import shutil

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait

PAGE_WAIT_S = 30.0  # how long a page may take to fetch its data before the test fails


def browser_paths() -> tuple[str, str]:
    """(chromium, chromedriver); pytest.fail naming the fix when either is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.fail(
            "the browser test needs Debian's chromium and chromium-driver: run `make browser` "
            "(apt-get install -y chromium chromium-driver)"
        )
    return chromium, driver


def start_browser(chromium: str, driver: str) -> WebDriver:
    options = Options()
    options.binary_location = chromium  # with the driver's path below: no Selenium Manager
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace for chromium's sandbox
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1000,1400",
        "--no-first-run",
        "--disable-background-networking",
    ):
        options.add_argument(argument)
    os.environ.setdefault("SE_OFFLINE", "true")  # never let selenium look for a driver online
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def wait_ready(browser: WebDriver) -> None:
    """Until the page's script has drawn what it fetched (it sets body[data-ready])."""
    WebDriverWait(browser, PAGE_WAIT_S).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "body[data-ready]"))
    )


def follow(browser: WebDriver, clickable: WebElement) -> None:
    """Click a link or submit button and wait for the page it opens to be ready.

    Waits on the URL, not on the old page's nodes: a check on an element of the document being
    replaced (selenium's staleness_of) can meet chromium mid-swap and fail with "Node with given
    id does not belong to the document" instead of reporting it stale. Once the URL has changed
    the new document is committed, so the ready mark found after it is the new page's.
    """
    before = browser.current_url
    clickable.click()
    WebDriverWait(browser, PAGE_WAIT_S).until(lambda driver: driver.current_url != before)
    wait_ready(browser)
