"""The review page driven in a real headless Chromium (Selenium): list, study, overlay, keyboard review, export.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and
``selenium`` (the ``dev`` extra). ``CXRKIT_REVIEW_SCREENSHOT=PATH`` saves the
study page's screenshot there (how ``docs/images/review-page.png`` is made).
"""

from __future__ import annotations

import csv
import os
import shutil

import pytest


WAIT_S = 60  # bounded waits: the first prediction on 2 loaded CPU cores can take a while


def _driver_paths() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("headless browser test needs chromium and chromedriver "
                    "(apt-get install -y chromium chromium-driver)")
    return browser, driver


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = _driver_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chrome-profile'}",
                 "--window-size=1100,720"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(label_server):
    from cxrkit.review import LabelClient, ReviewApp, ReviewServer

    server, run, _ = label_server
    app = ReviewApp(LabelClient(server.url), reviewer="dr-browser")
    review = ReviewServer(app, port=0).start()
    try:
        yield review, server
    finally:
        review.stop()


def _loaded(driver, element_id: str) -> bool:
    return driver.execute_script(
        "const i = document.getElementById(arguments[0]); return !!i && i.complete && i.naturalWidth > 0;",
        element_id)


def test_review_flow_in_headless_browser(browser, page, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from cxrkit.cli import main
    from cxrkit.data import load_dataset

    review, server = page
    wait = WebDriverWait(browser, WAIT_S)
    browser.get(review.url)
    assert "Local-only" in browser.find_element(By.ID, "local-note").text
    rows = browser.find_elements(By.CSS_SELECTOR, "#studies tbody tr")
    assert len(rows) == 7
    target = next(r for r in rows if "reviewed" not in r.text and r.get_attribute("data-study") != "dx-sample")
    study_id = target.get_attribute("data-study")
    target.find_element(By.TAG_NAME, "a").click()

    wait.until(ec.presence_of_element_located((By.ID, "prediction")))
    wait.until(lambda d: _loaded(d, "xray") and _loaded(d, "cam"))
    assert browser.find_element(By.ID, "cam").is_displayed()
    predicted = browser.find_element(By.ID, "prediction").text
    buttons = browser.find_elements(By.CSS_SELECTOR, "#classes .cls")
    assert len(buttons) >= 2 and all("%" in b.text for b in buttons)
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys("g")  # overlay off and on again
    assert not browser.find_element(By.ID, "cam").is_displayed()
    body.send_keys("g")
    assert browser.find_element(By.ID, "cam").is_displayed()
    if os.environ.get("CXRKIT_REVIEW_SCREENSHOT"):
        browser.save_screenshot(os.environ["CXRKIT_REVIEW_SCREENSHOT"])

    other = next(i for i, b in enumerate(buttons) if b.get_attribute("data-label") != predicted)
    corrected = buttons[other].get_attribute("data-label")
    body.send_keys(str(other + 1))  # correct the prediction with the number key
    wait.until(ec.text_to_be_present_in_element((By.ID, "msg"), f"Saved: {corrected}"))
    browser.refresh()
    wait.until(ec.presence_of_element_located((By.ID, "prediction")))
    chosen = browser.find_elements(By.CSS_SELECTOR, "#classes .cls.chosen")
    assert [c.get_attribute("data-label") for c in chosen] == [corrected]
    assert f"Reviewed: {corrected} by dr-browser" in browser.find_element(By.ID, "msg").text

    browser.find_element(By.TAG_NAME, "body").send_keys("n")  # next study, confirm with Enter
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-study") != study_id)
    next_id = browser.find_element(By.TAG_NAME, "body").get_attribute("data-study")
    next_predicted = wait.until(ec.presence_of_element_located((By.ID, "prediction"))).text
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ENTER)
    wait.until(ec.text_to_be_present_in_element((By.ID, "msg"), f"Saved: {next_predicted}"))

    out = tmp_path / "export" / "reviews.csv"
    assert main(["review", "export", "--server", server.url, str(out)]) == 0
    rows = {r["study"]: r for r in csv.DictReader(open(out))}
    assert rows[study_id]["label"] == corrected and rows[study_id]["prediction"] == predicted
    assert rows[study_id]["reviewer"] == "dr-browser"
    assert rows[next_id]["label"] == next_predicted
    spec = load_dataset("csv", out)
    assert len(spec.items) == len(rows)
