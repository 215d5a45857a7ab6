"""The hub's web page in a real headless browser (Debian's chromium + chromedriver, selenium).

Not skipped when the browser is missing: the test fails and names `make browser`, which
`make test` runs first.
"""

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from hub.seed import seed_hub
from tests.hub.browser import browser_paths, follow, start_browser, wait_ready
from tests.hub.hub_tickets import CHILD_LEVELS, PARENT_LEVELS, Lineage
from tests.hub.live import serving
from tests.ticket_cli.registry_tickets import Tickets
from ticket.bundle import decode_ticket


@pytest.fixture(scope="module")
def hub(
    tmp_path_factory: pytest.TempPathFactory, tickets: Tickets, lineage: Lineage
) -> Iterator[str]:
    root = tmp_path_factory.mktemp("hub")
    seed_hub(
        root,
        [lineage.parent, lineage.child, tickets.sparse],
        tickets.fleet_pub,
        sign_key=tickets.fleet_key,
    )
    with serving(root) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    chromium, driver = browser_paths()
    session = start_browser(chromium, driver)
    try:
        yield session
    finally:
        session.quit()


def _open(browser: WebDriver, url: str) -> None:
    browser.get(url)
    wait_ready(browser)


def _rows(browser: WebDriver) -> set[str]:
    rows = browser.find_elements(By.CSS_SELECTOR, "#results tbody tr")
    return {str(row.get_attribute("data-id")) for row in rows}


def test_search_filters_and_opens_a_card_with_its_plot(
    browser: WebDriver, hub: str, tickets: Tickets, lineage: Lineage
) -> None:
    _open(browser, hub + "/")
    everything = _rows(browser)

    browser.find_element(By.ID, "f-dataset").send_keys("heart-uci")
    browser.find_element(By.ID, "f-min_density").send_keys("0.3")
    follow(browser, browser.find_element(By.ID, "search"))
    filtered = _rows(browser)

    sparse = tickets.content_id(tickets.sparse)
    assert everything == {lineage.parent_id, lineage.child_id, sparse}
    assert filtered == {lineage.parent_id, lineage.child_id}
    assert "min_density=0.3" in browser.current_url
    assert browser.find_element(By.ID, "status").text == "2 tickets"

    follow(browser, browser.find_element(By.CSS_SELECTOR, f'tr[data-id="{lineage.child_id}"] td a'))

    assert browser.current_url == f"{hub}/tickets/{lineage.child_id}"
    assert browser.find_element(By.ID, "title").text == "Heart child"
    assert browser.find_element(By.ID, "content-id").text == lineage.child_id
    plot = browser.find_element(By.ID, "plot-svg")
    assert plot.get_attribute("data-metric") == "accuracy"
    for index, series in enumerate(("ticket", "random", "reinit"), start=1):
        points = plot.find_elements(By.CSS_SELECTOR, f'circle.point[data-series="{series}"]')
        drawn = sorted(
            (float(str(p.get_attribute("data-density"))), float(str(p.get_attribute("data-value"))))
            for p in points
        )
        assert drawn == sorted((level[0], level[index]) for level in CHILD_LEVELS)
    rows = browser.find_elements(By.CSS_SELECTOR, "#metrics tbody tr")
    shown = [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")] for row in rows]
    assert shown == [
        [f"{100 * density:.2f}%", *(f"{value:.4f}" for value in values)]
        for density, *values in CHILD_LEVELS
    ]


def test_lineage_links_both_ways_and_card_text_stays_text(
    browser: WebDriver, hub: str, lineage: Lineage
) -> None:
    _open(browser, f"{hub}/tickets/{lineage.child_id}")

    parent_link = browser.find_element(By.CSS_SELECTOR, "#parent a")
    relation = browser.find_element(By.ID, "parent").text
    follow(browser, parent_link)

    assert relation == f"re-pruned from {lineage.parent_id[:12]}"
    assert browser.current_url == f"{hub}/tickets/{lineage.parent_id}"
    title = browser.find_element(By.ID, "title")
    assert title.text == "Heart <b>parent</b>"  # the card's markup, shown, not rendered
    assert title.find_elements(By.TAG_NAME, "b") == []
    children = browser.find_elements(By.CSS_SELECTOR, "#children li")
    assert [child.get_attribute("data-id") for child in children] == [lineage.child_id]
    points = browser.find_elements(By.CSS_SELECTOR, 'circle.point[data-series="ticket"]')
    assert len(points) == len(PARENT_LEVELS)


def test_download_link_serves_the_ticket_whose_id_the_page_shows(
    browser: WebDriver, hub: str, tickets: Tickets, lineage: Lineage
) -> None:
    _open(browser, f"{hub}/tickets/{lineage.child_id[:12]}")

    href = str(browser.find_element(By.ID, "download").get_attribute("href"))
    shown_id = browser.find_element(By.ID, "check-id").text
    command = browser.find_element(By.ID, "pull-command").text
    with urllib.request.urlopen(href) as response:
        data = response.read()

    assert shown_id == lineage.child_id
    assert decode_ticket(data, trusted_keys=[tickets.fleet_pub.read_bytes()]).content_id == shown_id
    assert command.startswith(f"ticket pull {lineage.child_id} --hub {hub} --out ")
    assert Path(href).name == "bundle"


def test_bad_filters_and_unknown_tickets_show_the_hubs_error(browser: WebDriver, hub: str) -> None:
    _open(browser, hub + "/?min_density=0.9&max_density=0.1")
    bad_range = browser.find_element(By.ID, "status").text
    _open(browser, f"{hub}/tickets/{'ab' * 8}")
    unknown = browser.find_element(By.ID, "status").text

    assert bad_range == "the hub answered 400: min_density is above max_density"
    assert unknown.startswith("the hub answered 404: no ticket abababababababab")
    assert not browser.find_element(By.ID, "ticket").is_displayed()
