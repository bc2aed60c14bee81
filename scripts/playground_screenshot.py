"""Takes docs/img/playground.png: the playground of a running service (default: the one `make run`
starts), both forms filled in, in headless Chromium (Debian's chromium and chromium-driver).

    python scripts/playground_screenshot.py [http://127.0.0.1:8000] [docs/img/playground.png]
"""

from __future__ import annotations

import sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ready
from selenium.webdriver.support.ui import WebDriverWait


def main() -> None:
    url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000"
    out = sys.argv[2] if len(sys.argv) > 2 else "docs/img/playground.png"
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=920,1020"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(url + "/")
        wait = WebDriverWait(driver, 10)
        wait.until(ready.text_to_be_present_in_element((By.ID, "model"), "threshold"))
        for field, text in (("q1", "How do I learn Python?"), ("q2", "What is the best way to learn Python?")):
            driver.find_element(By.ID, field).clear()
            driver.find_element(By.ID, field).send_keys(text)
        driver.find_element(By.ID, "compare").click()
        wait.until(ready.presence_of_element_located((By.ID, "verdict")))
        driver.find_element(By.ID, "question").clear()
        driver.find_element(By.ID, "question").send_keys("Where can I change my password?")
        driver.find_element(By.ID, "namespace").clear()
        driver.find_element(By.ID, "namespace").send_keys("helpdesk")
        driver.find_element(By.ID, "search").click()
        wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#matches li")))
        driver.save_screenshot(out)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
