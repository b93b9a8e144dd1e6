"""The API's documentation page in a real headless browser, offline: every endpoint is listed, and every
script and style comes from the server itself."""

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

ENDPOINTS = ["/v1/embeddings", "/v1/model", "/v1/usage", "/healthz"]


def test_swagger_ui_lists_every_endpoint(api, browser):
    server, _ = api
    browser.driver.get(f"{server.url}/docs")
    WebDriverWait(browser.driver, 60).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, ".opblock-summary-path")))
    listed = {element.get_attribute("data-path") or element.text
              for element in browser.driver.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert set(ENDPOINTS) <= listed, listed
    assert browser.driver.find_elements(By.CSS_SELECTOR, ".authorize")  # the API key can be entered on the page
    outside = [url for url in browser.resources() if not url.startswith(server.url)]
    assert not outside, f"the page fetched from elsewhere: {outside}"


def test_no_page_needs_the_internet(api):
    server, _ = api
    assert httpx.get(f"{server.url}/redoc").status_code == 404  # ReDoc's bundle fetches its logo from a CDN
    page = httpx.get(f"{server.url}/docs").text
    assert "https://" not in page  # no script, style or icon from elsewhere


@pytest.fixture(autouse=True)
def _only_sqlite(api):
    """The page does not depend on the database: one kind is enough."""
    if "postgresql" in api[1].engine.url.drivername:
        pytest.skip("the documentation page is the same on every database")
