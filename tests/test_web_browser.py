"""The operator's page in a real browser: Debian's chromium driven by Selenium through Debian's chromium-driver
(.ci/run installs both; nothing downloads a browser), against a running agent on real images.

One agent and one browser for the module; every wait polls the page. The screenshots go to
``$EDGE_WEB_SCREENSHOTS`` when set (docs/img/web_*.png came from there), else to a temporary folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.web_rig import PASSWORD, WebRig

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WAIT_S = 60


@pytest.fixture(scope="module")
def rig(tmp_path_factory, real_set):
    # patch-knn: a detector that always gives heat maps (the combined one leaves them out for parts at any angle)
    r = WebRig(tmp_path_factory.mktemp("web_browser"), real_set, detector="patch-knn", roi=[0.1, 0.1, 0.8, 0.8])
    yield r
    r.stop()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("EDGE_WEB_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.fail("install Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; "
                    ".ci/run does)")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not fetch anything: both paths are given
    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 "--window-size=1280,1400", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def until(driver, condition, what: str, timeout: float = WAIT_S):
    """Poll ``condition(driver)`` until it is truthy; its value. An element that is not there yet, or that a page
    load replaced between finding and reading it (a form that submits), is polled again."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout, poll_frequency=0.05,
                         ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))
    return wait.until(condition, f"waited {timeout} s for {what}")


def js(driver, script: str, *args):
    return driver.execute_script(script, *args)


def _log_in(driver, url: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url + "login")
    field = driver.find_element(By.ID, "password")
    field.clear()
    field.send_keys(password)
    driver.find_element(By.ID, "login").click()


def _on_the_page(driver, url: str) -> None:
    """Logged in, on the page with the agent's state: each test stands on its own, whichever ran before it."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    if driver.current_url.endswith("/login"):
        _log_in(driver, url, PASSWORD)
    until(driver, lambda d: d.find_element(By.ID, "status").text == "running", "the page with the agent's state")


def test_a_wrong_password_is_refused_and_the_right_one_opens_the_page(rig: WebRig, browser) -> None:
    from selenium.webdriver.common.by import By

    browser.get(rig.url)
    assert browser.current_url.endswith("/login")  # nothing without a login
    _log_in(browser, rig.url, "not the password")
    until(browser, lambda d: d.find_element(By.ID, "error").text == "Wrong password.", "the refusal")
    assert not browser.get_cookies()
    _log_in(browser, rig.url, PASSWORD)
    until(browser, lambda d: d.find_element(By.ID, "status").text == "running", "the page with the agent's state")


def test_live_view_history_and_a_reject_with_its_heat_map(rig: WebRig, browser, shots: Path) -> None:
    from selenium.webdriver.common.by import By

    _on_the_page(browser, rig.url)
    rig.drop(rig.set.test_good[:2], "good")
    until(browser, lambda d: js(d, "return document.getElementById('live').naturalWidth > 0"), "a live frame")
    first_frame = int(browser.find_element(By.ID, "live").get_attribute("data-frame"))
    rig.drop(rig.set.test_good[2:4], "good")
    defects = rig.drop(rig.set.defects[:2], "defect")
    until(browser, lambda d: int(d.find_element(By.ID, "live").get_attribute("data-frame")) > first_frame,
          "the live view to move on")
    # Each verdict is on the page within a second of reaching the web sink.
    until(browser, lambda d: set(defects) <= {v["frame"] for v in rig.web.since(0)["verdicts"]},
          "the defects' verdicts on the agent")
    verdicts = rig.web.since(0)["verdicts"]
    seen = until(browser, lambda d: js(d, "return Object.keys(window.edgeSeen).length >= arguments[0] && "
                                          "window.edgeSeen", len(verdicts)), "the verdicts on the page")
    delays = [seen[str(v["seq"])] - v["received_ms"] for v in verdicts[-5:]]
    assert max(delays) < 1000, delays
    # The broken parts are in the gallery, with the alert picture (the frame with the heat map over it).
    rejected = {v["seq"] for v in verdicts if v["verdict"] == "anomalous"}
    assert rejected, "no broken part was rejected"
    figure = until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f"#gallery figure[data-seq='{max(rejected)}']"),
                   "the reject in the gallery")[0]
    image = figure.find_element(By.TAG_NAME, "img")
    until(browser, lambda d: js(d, "return arguments[0].complete && arguments[0].naturalWidth > 0", image),
          "the reject's picture")
    reject_id = int(image.get_attribute("src").rsplit("/", 1)[1].split(".")[0])
    alert = cv2.imdecode(np.frombuffer(rig.web.reject_jpeg(reject_id), np.uint8), cv2.IMREAD_COLOR)
    assert js(browser, "return arguments[0].naturalWidth", image) == alert.shape[1]
    frame = next(r["frame"] for r in rig.web.since(0)["rejects"] if r["id"] == reject_id)
    original = cv2.resize(cv2.imread(str(rig.frames / frame)), alert.shape[1::-1])
    assert np.abs(alert.astype(int) - original.astype(int)).mean() > 10, "no heat map drawn over the frame"
    until(browser, lambda d: d.find_element(By.ID, "c-inspected").text == str(rig.agent.inspected), "the counters")
    browser.save_screenshot(str(shots / "web_live.png"))
    figure.click()  # full size
    until(browser, lambda d: d.find_element(By.ID, "zoom").is_displayed(), "the full-size picture")
    browser.find_element(By.ID, "zoom").click()
    until(browser, lambda d: not d.find_element(By.ID, "zoom").is_displayed(), "the full-size picture to close")


def test_the_threshold_control_previews_then_moves_the_threshold(rig: WebRig, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _on_the_page(browser, rig.url)
    before = rig.agent.state()["threshold"]
    slider = browser.find_element(By.ID, "threshold-slider")
    slider.send_keys(Keys.END)  # the highest threshold the slider offers
    until(browser, lambda d: d.find_element(By.ID, "threshold-effect").text.startswith("would reject"),
          "the preview of the proposed threshold")
    assert rig.agent.state()["threshold"] == before  # a preview applies nothing
    proposed = js(browser, "return proposed")
    assert proposed > before
    browser.find_element(By.ID, "threshold-apply").click()
    until(browser, lambda d: d.find_element(By.ID, "threshold-result").get_attribute("data-ok") == "true",
          "the threshold command's reply")
    assert rig.agent.state()["threshold"] == pytest.approx(proposed, rel=1e-6)
    until(browser, lambda d: float(d.find_element(By.ID, "f-threshold").get_attribute("data-value") or 0) ==
          pytest.approx(proposed, rel=1e-6), "the new threshold on the page")


def test_the_retrain_button_retrains_and_rollback_restores(rig: WebRig, browser, shots: Path) -> None:
    from selenium.webdriver.common.by import By

    _on_the_page(browser, rig.url)
    before = rig.agent.state()["detector_file"]
    browser.find_element(By.ID, "retrain").click()
    until(browser, lambda d: d.find_element(By.ID, "progress").text.startswith("collecting: 0 of 3"),
          "the retrain's progress")
    rig.drop(rig.set.train_good[5:8], "shift")
    until(browser, lambda d: d.find_element(By.ID, "progress").get_attribute("data-stage") == "done",
          "the retrain to finish")
    after = rig.agent.state()["detector_file"]
    assert after != before
    until(browser, lambda d: js(d, "const t = document.getElementById('training'); return t.naturalWidth > 0 && "
                                   "!t.classList.contains('hidden') && t.src.includes('v=')"), "the training parts")
    until(browser, lambda d: d.find_element(By.ID, "f-detector").get_attribute("data-file") == after,
          "the new detector on the page")
    size = browser.get_window_size()
    browser.set_window_size(430, 1900)  # a phone's width: the cards stack
    browser.execute_script("document.getElementById('retrain-card').scrollIntoView()")
    browser.save_screenshot(str(shots / "web_retrain_phone.png"))
    browser.set_window_size(size["width"], size["height"])
    browser.find_element(By.ID, "rollback").click()
    until(browser, lambda d: d.find_element(By.ID, "f-detector").get_attribute("data-file") == before,
          "the rollback on the page")
    assert rig.agent.state()["detector_file"] == before
