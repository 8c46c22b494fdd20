"""The web page in a real headless Chromium (Debian's ``chromium``), driven by Playwright.

A person's path: load the page, upload a wav clip, see it drawn, type a question, ask
(by click and by Ctrl+Enter), read the streamed answer; and a broken file gives an error.
On a server started with an API key, the page asks for the key first.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import httpx
import numpy as np
import pytest

from midashenglm.serve.app import ServeConfig, create_app
from tests.conftest import clip, need
from tests.serve_helpers import ServerThread, audio_part, chat_body, wav_bytes

CHROMIUM = os.environ.get("MIDASHENGLM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
QUESTION = "What can you hear in this clip?"


@pytest.fixture(scope="module")
def server(engine):
    config = ServeConfig(served_model_name="tiny-web", max_tokens_limit=256)
    with ServerThread(create_app(engine, config)) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser():
    need(importlib.util.find_spec("playwright") is not None,
         "playwright is not installed (pip install playwright)")
    need(os.path.exists(CHROMIUM), "chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_page(browser, url: str, errors: list[str]):
    page = browser.new_page(viewport={"width": 1000, "height": 1300})
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(url)
    return page


@pytest.fixture(scope="module")
def page(browser, server):
    errors: list[str] = []
    page = open_page(browser, server.url, errors)
    yield page
    page.close()
    assert not [e for e in errors if "status of 400" not in e], errors  # bad-file test: 400


@pytest.fixture(scope="module")
def wav_file(tmp_path_factory):
    # A tone over noise with a pause in the middle: something visible in both pictures.
    wave = np.concatenate([clip(1.2, seed=1), np.zeros(3200, np.float32), clip(1.0, seed=5)])
    path = tmp_path_factory.mktemp("web") / "clip.wav"
    path.write_bytes(wav_bytes(wave))
    return path


CANVAS_STATS = """(id) => {
  const c = document.getElementById(id);
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const colours = new Set();
  let differ = 0;
  for (let i = 0; i < d.length; i += 4) {
    colours.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
    if (d[i] !== d[0] || d[i + 1] !== d[1] || d[i + 2] !== d[2]) differ++;
  }
  return {pixels: d.length / 4, colours: colours.size, differ};
}"""


def answer_of(server, wav: bytes) -> str:
    body = chat_body(audio_part(wav), question=QUESTION, model="tiny-web", max_tokens=256,
                     temperature=0)
    reply = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    return reply.json()["choices"][0]["message"]["content"]


def test_upload_ask_and_stream(page, server, wav_file, tmp_path):
    from playwright.sync_api import expect

    expect(page.locator("#model-name")).to_have_text("tiny-web")
    page.get_by_label("Upload a file").set_input_files(str(wav_file))
    expect(page.locator("#clip-info")).to_contain_text("2.40 s")

    waveform = page.evaluate(CANVAS_STATS, "waveform")
    spectrogram = page.evaluate(CANVAS_STATS, "spectrogram")
    assert waveform["differ"] > 0.05 * waveform["pixels"], waveform
    assert spectrogram["differ"] > 0.5 * spectrogram["pixels"], spectrogram
    assert spectrogram["colours"] > 100, spectrogram
    assert "2.4 seconds" in page.get_attribute("#spectrogram", "aria-label")

    page.get_by_label("Your question about the clip").fill(QUESTION)
    page.get_by_role("button", name="Ask").click()
    expect(page.locator("#status")).to_contain_text("Done", timeout=30000)
    answer = page.inner_text("#answer")
    assert answer.strip(), "no answer text appeared"
    assert int(page.get_attribute("#answer", "data-chunks")) > 1, "the answer was not streamed"
    assert "prompt tokens (12 for audio)" in page.inner_text("#status")  # 2.4 s at 5 tokens/s
    # The page sent the clip and question exactly: the API gives the same (greedy) answer.
    assert page.evaluate("document.getElementById('answer').textContent") == answer_of(
        server, wav_file.read_bytes())
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    if os.environ.get("MIDASHENGLM_SCREENSHOT"):
        page.screenshot(path=os.environ["MIDASHENGLM_SCREENSHOT"], full_page=True)
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_keyboard_and_errors(page, tmp_path):
    from playwright.sync_api import expect

    # Ctrl+Enter in the question box asks again, no mouse needed.
    page.evaluate("document.getElementById('answer').textContent = ''")
    page.focus("#question")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#status")).to_contain_text("Done", timeout=30000)
    expect(page.locator("#answer")).not_to_be_empty()

    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + os.urandom(2000))
    page.get_by_label("Upload a file").set_input_files(str(broken))
    expect(page.locator("#clip-info")).to_contain_text("cannot decode")
    page.get_by_role("button", name="Ask").click()
    expect(page.locator("#status")).to_contain_text("Error")
    status = page.inner_text("#status")
    assert "messages[0].content[0]" in status and "cannot decode" in status
    assert page.is_enabled("#ask") and page.is_disabled("#stop")


def test_the_page_asks_for_the_api_key(browser, engine, wav_file):
    from playwright.sync_api import expect

    key = "page-secret-42"
    config = ServeConfig(served_model_name="tiny-key", max_tokens_limit=64, api_key=key)
    errors: list[str] = []
    with ServerThread(create_app(engine, config)) as srv:
        page = open_page(browser, srv.url, errors)
        key_box = page.get_by_label("This server needs an API key")
        expect(page.locator("#key-card")).to_be_visible()
        expect(page.locator("#model-name")).to_have_text("API key needed")
        expect(key_box).to_be_focused()

        key_box.fill("not-the-key")
        page.get_by_role("button", name="Use this key").click()
        expect(page.locator("#key-status")).to_contain_text("did not accept")
        assert page.evaluate("sessionStorage.getItem('midashenglm-api-key')") is None

        key_box.fill(key)
        key_box.press("Enter")
        expect(page.locator("#model-name")).to_have_text("tiny-key")
        expect(page.locator("#key-card")).to_be_hidden()
        assert page.evaluate("sessionStorage.getItem('midashenglm-api-key')") == key

        page.get_by_label("Upload a file").set_input_files(str(wav_file))
        expect(page.locator("#clip-info")).to_contain_text("2.40 s")
        page.get_by_role("button", name="Ask").click()
        expect(page.locator("#status")).to_contain_text("Done", timeout=30000)
        expect(page.locator("#answer")).not_to_be_empty()

        page.reload()  # the tab keeps the key
        expect(page.locator("#model-name")).to_have_text("tiny-key")
        expect(page.locator("#key-card")).to_be_hidden()
        page.close()

        other = open_page(browser, srv.url, errors)  # another tab asks again
        expect(other.locator("#key-card")).to_be_visible()
        other.close()
    # The wrong key's 401 is the only error the browser logged.
    assert errors and all("status of 401" in e for e in errors), errors
