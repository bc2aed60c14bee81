"""The playground at / and the API's page at /docs in a real headless Chromium against a real
server, which no other host can be reached from: type into both forms, read the answers; see every
operation listed. Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them, and
sets DUPQ_REQUIRE_BROWSER=1 so that their absence fails the run instead of skipping the test).

``DUPQ_SCREENSHOT=path.png`` saves what the page shows at the end (docs/img/playground.png).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .server import Server

CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def browser() -> Iterator[object]:
    if not (CHROMEDRIVER and CHROMIUM):
        if os.environ.get("DUPQ_REQUIRE_BROWSER"):
            pytest.fail("chromium and chromedriver are needed (apt-get install chromium chromium-driver)")
        pytest.skip("chromium and chromedriver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,1100"):
        options.add_argument(flag)
    # No host but this one resolves: a page that needs anything from outside the service shows it.
    options.add_argument("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.mark.slow
def test_the_playground_answers_both_forms(browser: object, tiny_model_dir: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    server = Server(tiny_model_dir, tmp_path / "data", DUPQ_API_KEY="secret").start()
    try:
        items = [
            {"id": "py-1", "text": "How do I learn Python?", "namespace": "forum", "metadata": {"status": "open"}},
            {"id": "py-2", "text": "How can I learn Python quickly?", "namespace": "forum"},
            {"id": "age", "text": "How old are you?", "namespace": "forum"},
        ]
        server.request("POST", "/questions", {"questions": items}, headers={"authorization": "Bearer secret"})
        driver.get(server.url + "/")  # type: ignore[attr-defined]
        wait = WebDriverWait(driver, 10)
        find = driver.find_element  # type: ignore[attr-defined]
        # Without the key, the page says what is wrong.
        wait.until(ready.text_to_be_present_in_element((By.ID, "model"), "401"))
        find(By.TAG_NAME, "summary").click()
        find(By.ID, "key").send_keys("secret")
        # Two questions: similarity, probability and the decision, with its bar.
        for field, text in (("q1", "How old are you?"), ("q2", "How old are you?")):
            find(By.ID, field).clear()
            find(By.ID, field).send_keys(text)
        find(By.ID, "compare").click()
        wait.until(ready.presence_of_element_located((By.ID, "verdict")))
        assert find(By.ID, "verdict").text == "Duplicate"
        assert float(find(By.ID, "similarity").text) == pytest.approx(1.0, abs=1e-3)
        assert 0.0 <= float(find(By.ID, "probability").text) <= 1.0
        assert find(By.CSS_SELECTOR, "#pair .bar").get_attribute("class") == "bar dup"
        # A question: its matches in a namespace, with similarity bars and metadata.
        find(By.ID, "question").clear()
        find(By.ID, "question").send_keys("How do I learn Python?")
        find(By.ID, "namespace").clear()
        find(By.ID, "namespace").send_keys("forum")
        find(By.ID, "search").click()
        wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#matches li")))
        matches = driver.find_elements(By.CSS_SELECTOR, "#matches li")  # type: ignore[attr-defined]
        assert len(matches) == 3 and "How do I learn Python?" in matches[0].text
        assert '"status":"open"' in matches[0].text and "py-1" in matches[0].text
        assert len(driver.find_elements(By.CSS_SELECTOR, "#matches .bar")) == 3  # type: ignore[attr-defined]
        # The model line, now that the key is there, names the model and its threshold.
        driver.refresh()  # type: ignore[attr-defined]
        wait.until(ready.text_to_be_present_in_element((By.ID, "model"), "threshold"))
        # An empty namespace says so; a bad one shows the service's 422.
        find(By.ID, "namespace").clear()
        find(By.ID, "namespace").send_keys("elsewhere")
        find(By.ID, "search").click()
        wait.until(ready.presence_of_element_located((By.ID, "nomatch")))
        find(By.ID, "namespace").clear()
        find(By.ID, "namespace").send_keys("bad space")
        find(By.ID, "search").click()
        wait.until(ready.text_to_be_present_in_element((By.ID, "found"), "422"))
        if os.environ.get("DUPQ_SCREENSHOT"):
            driver.save_screenshot(os.environ["DUPQ_SCREENSHOT"])  # type: ignore[attr-defined]
    finally:
        server.stop()


@pytest.mark.slow
def test_the_docs_page_lists_every_operation_from_the_service_alone(
    browser: object, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    server = Server(tiny_model_dir, tmp_path / "data", DUPQ_API_KEY="secret").start()
    try:
        document = server.request("GET", "/openapi.json")[1]
        operations = sum(len(methods) for methods in document["paths"].values())
        driver.get(server.url + "/docs")  # type: ignore[attr-defined]
        shown = lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) == operations  # noqa: E731
        WebDriverWait(driver, 10).until(shown)
        assert "dupq" in driver.find_element(By.CSS_SELECTOR, ".info .title").text  # type: ignore[attr-defined]
        loaded = driver.execute_script(  # type: ignore[attr-defined]
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        assert loaded and all(url.startswith(server.url + "/") for url in loaded), loaded
    finally:
        server.stop()
