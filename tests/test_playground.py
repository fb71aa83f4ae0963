"""The playground page in a real headless Chromium: upload, localize, marker drawn (for a family answering
resized-image pixels and one answering 0-1000), chat.

Needs Debian's `chromium` and `chromium-driver` (scripts/setup.sh installs them on Linux).
Leaves screenshots of the page in test-artifacts/playground.png (and playground-0-1000.png).
"""

import json
import os
import shutil

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from holo_mlx.testing import synthetic_screenshot
from test_localize import normalized_family, normalized_server, thinking_checkpoint  # noqa: F401  (fixtures)
from test_server import ROOT

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                 reason="needs chromium and chromium-driver (bash scripts/setup.sh installs them)"),
              pytest.mark.server]  # every test browses a live server, some through request.getfixturevalue
ARTIFACTS = ROOT / "test-artifacts"
MARKER_RGB = [255, 45, 85]  # the page's #ff2d55


@pytest.fixture(scope="module")
def browser(module_tmp_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1200,1400", f"--user-data-dir={module_tmp_factory('chromium-profile')}"):
        options.add_argument(flag)
    # The Debian driver, named explicitly: Selenium would otherwise try to download one. Without the
    # OpenBLAS preload the test process runs under (conftest): Chromium crashes at start with it.
    env = {key: value for key, value in os.environ.items() if key != "LD_PRELOAD"}
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER, env=env), options=options)
    yield driver
    driver.quit()


def canvas_pixel(browser, x: float, y: float) -> list[int]:
    return browser.execute_script(
        "return Array.from(document.getElementById('canvas').getContext('2d')"
        ".getImageData(arguments[0], arguments[1], 1, 1).data)", x, y)


@pytest.mark.parametrize("serving, artifact", [("server", "playground.png"),
                                               ("normalized_server", "playground-0-1000.png")])
def test_localize_draws_the_click_on_the_original_screenshot(serving, artifact, request, browser, tmp_path):
    server = request.getfixturevalue(serving)  # Holo1.5's pixels, or the 0-1000 family of test_localize
    screenshot = tmp_path / "screen.png"
    synthetic_screenshot(1710, 852, seed=3).save(screenshot)
    browser.get(f"{server.url}/playground")
    browser.find_element(By.ID, "file").send_keys(str(screenshot))
    wait = WebDriverWait(browser, 120)
    wait.until(lambda driver: driver.find_element(By.ID, "localize").is_enabled())
    canvas = browser.find_element(By.ID, "canvas")
    before = browser.execute_script("return arguments[0].toDataURL()", canvas)

    browser.find_element(By.ID, "target").send_keys("the Submit button")
    browser.find_element(By.ID, "localize").click()
    marker = wait.until(lambda driver: canvas.get_attribute("data-marker"))

    ARTIFACTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / artifact))
    result = json.loads(browser.find_element(By.ID, "raw").text)
    x, y = map(int, marker.split(","))
    assert (x, y) == (result["original"]["x"], result["original"]["y"])
    assert 0 <= x < 1710 and 0 <= y < 852
    # The canvas shows the original screenshot, scaled to 960 pixels wide, with the marker on the click.
    scale = 960 / 1710
    assert (canvas.get_attribute("width"), canvas.get_attribute("height")) == ("960", str(round(852 * scale)))
    assert browser.execute_script("return arguments[0].toDataURL()", canvas) != before
    assert canvas_pixel(browser, (x + 0.5) * scale, (y + 0.5) * scale) == MARKER_RGB + [255]
    assert (ARTIFACTS / artifact).stat().st_size > 10_000


def test_chat_box_shows_the_models_answer(server, browser):
    browser.get(f"{server.url}/")
    WebDriverWait(browser, 10).until(lambda driver: driver.find_element(By.ID, "model").text == "holo-tiny")
    assert chat_lines(browser, "Hello")[1:] == [("assistant", None)]  # Holo1.5 does not think


def test_chat_box_shows_a_thinking_models_reasoning_apart(normalized_server, browser):
    browser.get(f"{normalized_server.url}/")
    WebDriverWait(browser, 10).until(lambda driver: driver.find_element(By.ID, "model").text == "toy")
    lines = chat_lines(browser, "Hello")  # the budget runs out inside the random weights' reasoning
    assert [role for role, _ in lines] == ["user", "reasoning", "assistant"] and lines[1][1]


def chat_lines(browser, text: str) -> list[tuple[str, str | None]]:
    """Send one chat message with max_tokens 4; the chat log's lines (role, text) once answered."""
    browser.find_element(By.ID, "max-tokens").clear()
    browser.find_element(By.ID, "max-tokens").send_keys("4")
    browser.find_element(By.ID, "chat-input").send_keys(text)
    browser.find_element(By.ID, "chat-send").click()
    WebDriverWait(browser, 60).until(
        lambda driver: driver.find_elements(By.CSS_SELECTOR, "#chat-log .assistant, #chat-log .error"))
    lines = [(line.get_attribute("class"), line.text) for line in browser.find_elements(By.CSS_SELECTOR, "#chat-log p")]
    assert lines[0] == ("user", text)
    return [(role, None if role in ("user", "assistant") else line) for role, line in lines]
