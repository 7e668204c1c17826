"""The web app in headless Chromium at phone size (360x800), driven by Selenium with Debian's
chromedriver: sign in with the token link, stream an answer, flip steering, compare, open "why",
teach "I wanted this instead", forget it again.

Needs Debian's ``chromium`` and ``chromium-driver`` (``make browser`` installs them); skipped
without them. The slow variant runs the same flow on the default model with a demo profile learnt
on the device, and takes a screenshot (docs/screenshots/web_app.png is refreshed only with
FINTS_EDGE_UPDATE_SCREENSHOT=1: a test run never rewrites a tracked file).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import httpx
import pytest
from test_serve import AUTH, TOKEN, live_server, make_settings, user_profiles  # noqa: F401

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="needs Debian's chromium and chromium-driver (`make browser` installs them)",
)
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "screenshots" / "web_app.png"
WAIT = 60  # seconds, the bound on every wait below
PACE = 0.04  # seconds between streamed tokens in the browser tests (see `paced`)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-extensions", "--no-first-run", "--window-size=360,800"):  # fmt: skip
        opts.add_argument(arg)
    opts.add_experimental_option(
        "mobileEmulation", {"deviceMetrics": {"width": 360, "height": 800, "pixelRatio": 2.0}}
    )
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def paced(monkeypatch):
    """Each streamed piece is emitted PACE seconds after the last, so that "the text grows in
    several steps" does not depend on this machine's speed: a fast CPU finishes the tiny model's
    12 tokens before the browser renders once (seen on CI: the page went 0 -> 57 characters)."""
    import time

    from fints_edge.serve.worker import Job

    emit = Job.emit

    def slower(self, piece: str) -> None:
        time.sleep(PACE)  # on the worker thread: generation waits, the event loop does not
        emit(self, piece)

    monkeypatch.setattr(Job, "emit", slower)


def server_answer(url: str, text: str, user: str, steer: bool) -> str:
    body = {
        "messages": [{"role": "user", "content": text}],
        "user": user,
        "fints": {"steer": steer},
    }
    r = httpx.post(f"{url}/v1/chat/completions", json=body, headers=AUTH, timeout=WAIT)
    return r.json()["choices"][0]["message"]["content"]


def run_flow(driver, url: str, user: str, text: str, wanted: str, screenshot: Path) -> None:
    """The whole user story; asserts what the page shows against the API's own answers."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(driver, WAIT)
    steered = server_answer(url, text, user, True)
    unsteered = server_answer(url, text, user, False)
    assert steered != unsteered

    # sign in through the token link; the app keeps the token and drops it from the address
    driver.get(f"{url}/#token={TOKEN}")
    wait.until(lambda d: user in [o.text for o in Select(d.find_element(By.ID, "user")).options])
    assert driver.execute_script("return localStorage.getItem('fints.token')") == TOKEN
    assert "token" not in driver.current_url
    assert driver.execute_script("return window.innerWidth") == 360
    Select(driver.find_element(By.ID, "user")).select_by_value(user)

    def send(message: str) -> None:
        box = driver.find_element(By.ID, "input")
        box.send_keys(message)
        driver.find_element(By.ID, "send").click()

    def exchange(i: int):
        return wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".exchange")[i:][:1])[0]

    def settled(i: int) -> None:  # the answer's meta line appears when the stream has ended
        wait.until(lambda _: "·" in exchange(i).find_element(By.CSS_SELECTOR, ".meta").text)

    # 1. a streamed, steered answer: the text grows in several steps, then equals the API's
    driver.execute_script(
        "window.__lengths = [];"
        "new MutationObserver(() => { for (const t of document.querySelectorAll('.steered .text'))"
        " window.__lengths.push(t.textContent.length); })"
        ".observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});"
    )
    send(text)
    settled(0)
    first = exchange(0)
    assert first.find_element(By.CSS_SELECTOR, ".steered .text").text == steered
    assert not first.find_element(By.CSS_SELECTOR, ".unsteered").is_displayed()
    lengths = driver.execute_script("return window.__lengths")
    assert len(set(lengths)) >= 3, lengths  # arrived piece by piece, not at once
    assert "steered by" in first.find_element(By.CSS_SELECTOR, ".meta").text

    # 2. steering off: the model's own answer
    driver.find_element(By.CSS_SELECTOR, "label.switch:has(#steer)").click()
    assert not driver.find_element(By.ID, "steer").is_selected()
    send(text)
    settled(1)
    second = exchange(1)
    assert second.find_element(By.CSS_SELECTOR, ".unsteered .text").text == unsteered
    assert not second.find_element(By.CSS_SELECTOR, ".steered").is_displayed()
    assert not second.find_element(By.CSS_SELECTOR, "[data-act=good]").is_enabled()

    # 3. side by side
    driver.find_element(By.CSS_SELECTOR, "label.switch:has(#compare)").click()
    send(text)
    settled(2)
    third = exchange(2)
    left = third.find_element(By.CSS_SELECTOR, ".unsteered")
    right = third.find_element(By.CSS_SELECTOR, ".steered")
    assert left.find_element(By.CSS_SELECTOR, ".text").text == unsteered
    assert right.find_element(By.CSS_SELECTOR, ".text").text == steered
    assert left.location["y"] == right.location["y"] and left.location["x"] < right.location["x"]
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(screenshot))

    # 4. why: the retrieved history items and their weights, as the API gives them
    why = httpx.post(
        f"{url}/v1/profiles/{user}/why", json={"input": text}, headers=AUTH, timeout=WAIT
    ).json()
    first.find_element(By.CSS_SELECTOR, "[data-act=why]").click()
    wait.until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#why-items li")) == len(why["retrieved"])
    )
    items = driver.find_elements(By.CSS_SELECTOR, "#why-items li")
    top = why["retrieved"][0]
    assert f"#{top['id']}" in items[0].text and top["input"] in items[0].text
    assert f"weight {top['weight']:.3f}" in items[0].text
    driver.find_element(By.CSS_SELECTOR, "[data-close=why]").click()
    assert not driver.find_element(By.ID, "why").is_displayed()

    # 5. "I wanted this instead": the edited answer becomes a history item, contrast = shown one
    n_before = httpx.get(f"{url}/v1/profiles/{user}", headers=AUTH).json()["items"]
    area = first.find_element(By.CSS_SELECTOR, "form.want textarea")
    assert not area.is_displayed()
    first.find_element(By.CSS_SELECTOR, "[data-act=want]").click()
    assert area.is_displayed()
    assert area.get_attribute("value") == steered  # starts from the answer shown
    area.clear()
    area.send_keys(wanted)
    first.find_element(By.CSS_SELECTOR, "form.want button[type=submit]").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), f"learned item #{n_before}"))
    assert not area.is_displayed()
    profile = httpx.get(f"{url}/v1/profiles/{user}", headers=AUTH).json()
    assert profile["items"] == n_before + 1
    assert (profile["history"][-1]["input"], profile["history"][-1]["output"]) == (text, wanted)

    # 6. ... and forget it again
    forget = first.find_element(By.CSS_SELECTOR, "[data-act=forget]")
    assert forget.is_enabled()
    forget.click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), f"forgot item #{n_before}"))
    assert httpx.get(f"{url}/v1/profiles/{user}", headers=AUTH).json()["items"] == n_before
    assert not forget.is_enabled()
    assert (
        driver.execute_script(
            "return navigator.serviceWorker.getRegistrations().then(r => r.length)"
        )
        == 1
    )


@pytest.mark.usefixtures("paced")
def test_the_web_app_at_phone_size(make_settings, browser, tmp_path):  # noqa: F811
    settings = make_settings(strength=40.0, max_tokens=12)
    with live_server(settings) as (url, _):
        shot = tmp_path / "web_app.png"
        run_flow(
            browser,
            url,
            "alice",
            "Write a headline about the rain.",
            "rain news, all lowercase!",
            shot,
        )
    width, height = png_size(shot)
    assert (width, height) == (720, 1600)  # 360x800 at pixel ratio 2


@pytest.mark.slow
@pytest.mark.usefixtures("paced")
def test_the_web_app_on_the_default_model_takes_a_screenshot(
    browser, onnx_encoder_dir, onnx_aggregator_path, tmp_path
):
    """The demo user (lowercase headlines), learnt on the device from the demo history."""
    from export.demo import HISTORY, TASK, snippets
    from fints_edge._paths import default_gguf
    from fints_edge.engine import EngineConfig
    from fints_edge.learn import main as learn_main
    from fints_edge.serve import Settings

    profiles = tmp_path / "profiles"
    rc = learn_main(
        ["--history", str(HISTORY), "--out", str(profiles / "demo.npz"),
         "--encoder", str(onnx_encoder_dir), "--threads", "1", "--quiet"]
    )  # fmt: skip
    assert rc == 0
    settings = Settings(
        model=default_gguf(), profiles_dir=profiles, encoder_dir=onnx_encoder_dir,
        aggregator_path=onnx_aggregator_path, token=TOKEN,
        engine=EngineConfig(max_tokens=32, threads=1),
    )  # fmt: skip
    text = TASK + snippets("test")[0]
    with live_server(settings) as (url, _):
        wanted = server_answer(url, text, "demo", False).lower()
        run_flow(browser, url, "demo", text, wanted, tmp_path / "web_app.png")
    assert png_size(tmp_path / "web_app.png") == (720, 1600)
    if os.environ.get("FINTS_EDGE_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(tmp_path / "web_app.png", SCREENSHOT)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_the_manifest_and_service_worker_make_it_installable():
    """What Chrome checks before it offers "install": a manifest with name, start URL,
    standalone display and 192/512 px PNG icons that exist, and a service worker with a fetch
    handler that never caches the API."""
    web = Path(__file__).resolve().parent.parent / "fints_edge" / "web"
    m = json.loads((web / "manifest.webmanifest").read_text())
    assert m["name"] and m["short_name"] and m["start_url"] and m["display"] == "standalone"
    pngs = {i["sizes"]: i["src"] for i in m["icons"] if i["type"] == "image/png"}
    for size in ("192x192", "512x512"):
        w, h = png_size(web / pngs[size])
        assert f"{w}x{h}" == size
    sw = (web / "sw.js").read_text()
    assert "addEventListener('fetch'" in sw and "startsWith('/v1/')" in sw
    html = (web / "index.html").read_text()
    assert 'rel="manifest"' in html and "<script>" not in html and "style=" not in html
