"""The page driven in headless Chromium (Debian chromium + chromium-driver, Selenium):
upload, move the alpha slider and the divider, zoom, download and check the file, see a
readable error, and steer a camera's alpha from the cameras view.

``python tests/test_web_browser.py docs/web-screenshot.png`` re-makes the README screenshot
(with the best model present: the shipped pair, else realesr-animevideov3)."""
from __future__ import annotations

import base64
import os
import shutil
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import free_port
from ultrares_stream.config import WEB_ALPHA

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]


@contextmanager
def serve(app):
    """uvicorn on a free 127.0.0.1 port in a thread; yields the base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


@contextmanager
def chromium(download_dir: Path, size=(1440, 900)):
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip(f"needs Debian chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER})")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not download anything
    profile = tempfile.mkdtemp(prefix="ultrares-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
                f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}"):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {"download.default_directory": str(download_dir),
                                           "download.prompt_for_download": False})
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    try:
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)})
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(predicate, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def _after_checksum(driver) -> float:
    """Sum of the displayed result's pixels, read back through a canvas."""
    return driver.execute_script("""
        const img = document.getElementById('after');
        const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
        const g = c.getContext('2d'); g.drawImage(img, 0, 0);
        const d = g.getImageData(0, 0, c.width, c.height).data; let s = 0;
        for (let i = 0; i < d.length; i += 4) s += d[i] * 3 + d[i + 1] * 5 + d[i + 2] * 7;
        return s;""")


def _result_count(driver) -> str:
    return driver.execute_script("return document.body.dataset.result || ''")


def test_upscale_compare_and_download_in_chromium(tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    from tests.test_web_api import FakeService, _tiny_net
    from ultrares_stream.models.checkpoint import save_checkpoint
    from ultrares_stream.web.app import create_app

    save_checkpoint(_tiny_net(1), tmp_path / "psnr.safetensors")
    save_checkpoint(_tiny_net(2), tmp_path / "gan.safetensors")
    service = FakeService()
    app = create_app(service, default_model=f"{tmp_path / 'psnr.safetensors'}+{tmp_path / 'gan.safetensors'}",
                     device="cpu")
    yy, xx = np.mgrid[0:30, 0:40]
    picture = tmp_path / "crossing.png"
    Image.fromarray(np.stack([xx * 6, yy * 8, (xx + yy) * 3], -1).astype(np.uint8)).save(picture)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("shopping list, not a picture\n" * 20)
    downloads = tmp_path / "downloads"
    downloads.mkdir()

    with serve(app) as base, chromium(downloads) as driver:
        find = lambda css: driver.find_element(By.CSS_SELECTOR, css)  # noqa: E731
        driver.get(base + "/")
        wait_for(lambda: driver.execute_script("return document.body.dataset.ready"), 30, "the models list")
        assert "faithful" in find("#alpha-ends").text and "detailed" in find("#alpha-ends").text

        # a file that is not an image: a readable error, nothing else
        find("#file-input").send_keys(str(not_an_image))
        find("#upscale-btn").click()
        error = wait_for(lambda: find("#error").is_displayed() and find("#error").text, 30, "the error message")
        assert "not a PNG, JPEG" in error

        # a real image: upscaled x4, shown over the original
        find("#file-input").send_keys(str(picture))
        wait_for(lambda: not find("#error").is_displayed(), 10, "the error to clear")
        find("#upscale-btn").click()
        first = wait_for(lambda: _result_count(driver), 60, "the first result")
        assert driver.execute_script("return document.getElementById('after').naturalWidth") == 160
        assert "160×120" in find("#result-info").text and f"detail {WEB_ALPHA:.2f}" in find("#result-info").text
        canvas = find("#canvas")
        before, after = find("#before"), find("#after")
        assert before.size == after.size == canvas.size  # same on-screen scale
        sum_half = _after_checksum(driver)

        # alpha slider to "detailed": re-runs, different pixels on screen
        find("#alpha").send_keys(Keys.END)
        wait_for(lambda: _result_count(driver) not in ("", first), 60, "the alpha=1 result")
        assert "detail 1.00" in find("#result-info").text
        assert _after_checksum(driver) != sum_half

        # eight passes averaged: re-runs, says so, and the picture changes
        second, sum_one = _result_count(driver), _after_checksum(driver)
        Select(find("#ensemble")).select_by_value("8")
        wait_for(lambda: _result_count(driver) not in ("", second), 60, "the 8-pass result")
        assert "8 passes" in find("#result-info").text
        assert _after_checksum(driver) != sum_one
        third = _result_count(driver)
        Select(find("#ensemble")).select_by_value("1")
        wait_for(lambda: _result_count(driver) not in ("", third), 60, "the 1-pass result")
        assert "passes" not in find("#result-info").text

        # the divider: drag it left, the result is uncovered from there on
        assert find("#divider").value_of_css_property("left") == f"{canvas.size['width'] / 2:g}px"
        ActionChains(driver).drag_and_drop_by_offset(find("#divider-handle"), -120, 0).perform()
        split = driver.execute_script("return Number(document.getElementById('divider-handle').getAttribute('aria-valuenow'))")
        expected = round(100 * (canvas.size["width"] / 2 - 120) / canvas.size["width"])
        assert abs(split - expected) <= 2, (split, expected)
        clip = driver.execute_script("return document.getElementById('after').style.clipPath")
        assert clip.startswith("inset(0px 0px 0px ") and abs(float(clip.split()[-1].rstrip("%)")) - split) < 1, clip

        # zoom in: bigger on screen, pixels shown as squares
        width_fit = canvas.size["width"]
        find("#zoom-in").click()
        find("#zoom-in").click()
        assert canvas.size["width"] > width_fit * 2
        assert "pixelated" in canvas.get_attribute("class")
        find("#zoom-fit").click()
        assert abs(canvas.size["width"] - width_fit) <= 1

        shot = Path(os.environ.get("ULTRARES_SCREENSHOT_DIR", tmp_path)) / "web-test.png"
        driver.save_screenshot(str(shot))

        # download: a real PNG of the result's size
        find("#download").click()
        done = wait_for(lambda: [p for p in downloads.iterdir() if not p.name.endswith(".crdownload")], 30, "the download")
        assert done[0].name.startswith("crossing-ultrares-160x120") and done[0].suffix == ".png"
        with Image.open(done[0]) as img:
            assert img.format == "PNG" and img.size == (160, 120)

        # cameras: a live preview per camera and an alpha slider wired to PATCH
        find("#tab-cameras").click()
        wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, ".camera")) == 2, 15, "two camera cards")
        north = find('.camera[data-camera="north"]')
        wait_for(lambda: driver.execute_script(
            "return document.querySelector('.camera[data-camera=\"north\"] .preview img').naturalWidth") == 32,
            15, "the north preview")
        assert "25.0 / 24.8" in north.text and "40 ms" in north.text
        cold = find('.camera[data-camera="cold"]')
        assert "waiting for the first frame" in cold.text
        north.find_element(By.CSS_SELECTOR, ".camera-alpha").send_keys(Keys.HOME)
        wait_for(lambda: service.cameras["north"].alpha == 0.0, 15, "PATCH alpha=0 to reach the camera")
        wait_for(lambda: "detail set to 0.00" in north.text, 10, "the confirmation")


def _docs_operations(driver) -> list[str]:
    """The operation paths Swagger UI lists (its rendered DOM, not the schema)."""
    from selenium.webdriver.common.by import By

    return [e.text.replace("\u200b", "") for e in driver.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")]


def test_api_docs_render_the_operations_in_chromium(tmp_path):
    """/docs as a person sees it: Swagger UI lists every operation (no "Unable to render this
    definition"); with a token, the browser's Basic prompt (token as password) opens it."""
    from selenium.webdriver.common.by import By

    from tests.test_web_api import FakeService
    from ultrares_stream.web.app import create_app

    expected = {"/api/v1/upscale", "/api/v1/models", "/api/v1/info", "/api/v1/streams", "/api/v1/streams/{name}",
                "/api/v1/streams/{name}/snapshot.jpg", "/api/v1/streams/{name}/zoom", "/api/v1/zoom"}
    for token in (None, "docs-token"):
        app = create_app(FakeService(), device="cpu", api_token=token, allowed_hosts=["127.0.0.1"])
        with serve(app) as base, chromium(tmp_path) as driver:
            if token:  # what the browser sends once its Basic prompt (401 on /docs) is answered
                basic = base64.b64encode(f"user:{token}".encode()).decode()
                driver.execute_cdp_cmd("Network.enable", {})
                driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {basic}"}})
            driver.get(base + "/docs")
            listed = wait_for(lambda: expected <= set(_docs_operations(driver)) and _docs_operations(driver), 60,
                              f"Swagger UI to list the operations (token {token is not None})")
            body = driver.find_element(By.TAG_NAME, "body").text
            assert "Unable to render" not in body and "Upscale one image" in body, body[:500]
            assert set(listed) == expected, listed
            driver.find_element(By.CSS_SELECTOR, ".opblock-summary-path").click()  # an operation opens
            wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, ".opblock-body"), 15, "the operation's details")


def test_page_asks_for_the_token_and_then_shows_the_cameras(tmp_path):
    """With a token, the page's API calls (models, streams, snapshots, PATCH) carry it once entered."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from tests.test_web_api import FakeService
    from ultrares_stream.web.app import create_app

    service = FakeService()
    app = create_app(service, device="cpu", api_token="page-token", allowed_hosts=["127.0.0.1"])
    with serve(app) as base, chromium(tmp_path) as driver:
        find = lambda css: driver.find_element(By.CSS_SELECTOR, css)  # noqa: E731
        driver.get(base + "/#cameras")
        wait_for(lambda: find("#token-panel").is_displayed(), 15, "the token field")
        find("#token-input").send_keys("page-token")
        find("#token-save").click()
        wait_for(lambda: driver.execute_script("return document.body.dataset.ready"), 30, "the models list")
        north = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, '.camera[data-camera="north"]'), 15, "cards")[0]
        wait_for(lambda: driver.execute_script(
            "return document.querySelector('.camera[data-camera=\"north\"] .preview img').naturalWidth") == 32,
            15, "the north preview, fetched with the token")
        north.find_element(By.CSS_SELECTOR, ".camera-alpha").send_keys(Keys.HOME)
        wait_for(lambda: service.cameras["north"].alpha == 0.0, 15, "PATCH alpha=0 with the token")
        assert driver.execute_script("return sessionStorage.getItem('ultrares-token')") == "page-token"


#: (img, x, y in the camera's decoded pixels; the preview is x2) -> the screen offset from the image's centre
FRAME_TO_OFFSET = """
    const img = arguments[0], b = img.getBoundingClientRect();
    const fit = Math.min(b.width / img.naturalWidth, b.height / img.naturalHeight), s = 2 * fit;
    const left = b.left + (b.width - img.naturalWidth * fit) / 2, top = b.top + (b.height - img.naturalHeight * fit) / 2;
    return [Math.round(left + arguments[1] * s - b.left - b.width / 2), Math.round(top + arguments[2] * s - b.top - b.height / 2)];"""


def test_a_box_drawn_on_a_camera_shows_the_fused_zoom_beside_one_frame(tmp_path, tiny_model):
    """A real Service (a camera that enhanced a clip of a plate passing), the page's cameras view:
    a box dragged with the mouse over the plate on the preview gives the fused x4 crop beside the
    one frame's bicubic x4, both loaded at 4x the box, and the provenance text."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from conftest import wait_for as wait_until
    from tests.test_zoom_api import box_at, panning_clip, service
    from ultrares_stream.service import HttpServer, make_app

    clip, _, boxes = panning_clip(tmp_path / "pass.mp4", 40)
    svc = service(tiny_model, [{"name": "gate", "input": str(clip), "output": str(tmp_path / "out.mkv")}])
    http = HttpServer(make_app(svc), "127.0.0.1", free_port()).start()
    svc.start()
    try:
        assert wait_until(lambda: svc.cameras["gate"].finished, 90), svc.status()
        with chromium(tmp_path) as driver:
            driver.get(http.url + "/#cameras")
            card = '.camera[data-camera="gate"]'
            wait_for(lambda: driver.execute_script(f"return document.querySelector('{card} .preview img')?.naturalWidth")
                     == 320, 20, "the preview (160x120 enhanced x2)")
            wait_for(lambda: "160×120" in driver.find_element(By.CSS_SELECTOR, card).text, 10, "the input size")
            x, y, w, h = box_at(boxes[0], 39)  # the plate in the last frame, which the preview shows
            img = driver.find_element(By.CSS_SELECTOR, f"{card} .preview img")
            at = lambda px, py: driver.execute_script(FRAME_TO_OFFSET, img, px, py)  # noqa: E731
            (x0, y0), (x1, y1) = at(x - 1, y - 1), at(x + w + 1, y + h + 1)
            ActionChains(driver).move_to_element_with_offset(img, x0, y0).click_and_hold() \
                .move_to_element_with_offset(img, (x0 + x1) // 2, (y0 + y1) // 2) \
                .move_to_element_with_offset(img, x1, y1).release().perform()
            wait_for(lambda: driver.execute_script(f"return document.querySelector('{card}').dataset.zoom"), 30,
                     "the zoom")
            panel = driver.find_element(By.CSS_SELECTOR, f"{card} .zoom-panel")
            drawn = [int(v) for v in driver.execute_script(f"return document.querySelector('{card}').dataset.zoomBox")
                     .split(",")]
            assert abs(drawn[0] - (x - 1)) <= 1 and abs(drawn[2] - (w + 2)) <= 2, (drawn, (x, y, w, h))
            sizes = driver.execute_script(f"""return ['.zoom-fused', '.zoom-single'].map((c) =>
                [document.querySelector('{card} ' + c).naturalWidth, document.querySelector('{card} ' + c).naturalHeight])""")
            assert sizes == [[4 * drawn[2], 4 * drawn[3]]] * 2, (sizes, drawn)
            text = panel.text
            assert "Machine-fused from 16 frames" in text and "Not an original recording" in text, text
            assert "One frame (bicubic ×4)" in text and "Frames 16 of 16" in text, text
            shot = Path(os.environ.get("ULTRARES_SCREENSHOT_DIR", tmp_path)) / "web-zoom-test.png"
            driver.save_screenshot(str(shot))
    finally:
        svc.stop(10)
        http.stop()


#: (video, x, y in the clip's pixels) -> the screen offset from the video element's centre
CLIP_TO_OFFSET = """
    const v = arguments[0], b = v.getBoundingClientRect();
    const s = Math.min(b.width / v.videoWidth, b.height / v.videoHeight);
    const left = (b.width - v.videoWidth * s) / 2, top = (b.height - v.videoHeight * s) / 2;
    return [Math.round(left + arguments[1] * s - b.width / 2), Math.round(top + arguments[2] * s - b.height / 2)];"""


def test_a_box_drawn_on_an_uploaded_clip_shows_the_fused_zoom_beside_one_frame(tmp_path):
    """The page's clip view: a file that is not a video says so; a real H.264 clip is shown, seeked
    to 0.8 s with the Seconds field, and a box dragged over the plate there gives the fused x4 crop
    (POST /api/v1/zoom) beside the one frame's bicubic x4, both 4x the box, and the provenance line."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from tests.test_zoom_api import box_at, panning_clip
    from ultrares_stream.web.app import create_app

    clip, _, boxes = panning_clip(tmp_path / "pass.mp4", 40)
    not_a_clip = tmp_path / "notes.mp4"
    not_a_clip.write_text("shopping list, not a video\n" * 20)
    with serve(create_app(device="cpu")) as base, chromium(tmp_path) as driver:
        find = lambda css: driver.find_element(By.CSS_SELECTOR, css)  # noqa: E731
        ready = lambda: driver.execute_script("return document.body.dataset.clipReady")  # noqa: E731
        driver.get(base + "/#clip")
        find("#clip-input").send_keys(str(not_a_clip))
        wait_for(lambda: find("#clip-error").is_displayed() and "cannot show notes.mp4" in find("#clip-error").text,
                 20, "the error for a file that is not a video")
        find("#clip-input").send_keys(str(clip))
        wait_for(lambda: ready() == "0.000", 20, "the clip's first frame")
        assert not find("#clip-error").is_displayed() and "160×120" in find("#clip-info").text
        seconds = find("#clip-at")
        seconds.clear()
        seconds.send_keys("0.8", Keys.TAB)
        wait_for(lambda: ready() == "0.800", 20, f"the frame at 0.8 s ({ready()}, {seconds.get_attribute('value')})")
        x, y, w, h = box_at(boxes[0], 20)  # the plate in frame 20 (0.8 s at 25 fps)
        video = find("#clip-video")
        at = lambda px, py: driver.execute_script(CLIP_TO_OFFSET, video, px, py)  # noqa: E731
        (x0, y0), (x1, y1) = at(x - 1, y - 1), at(x + w + 1, y + h + 1)
        ActionChains(driver).move_to_element_with_offset(video, x0, y0).click_and_hold() \
            .move_to_element_with_offset(video, (x0 + x1) // 2, (y0 + y1) // 2) \
            .move_to_element_with_offset(video, x1, y1).release().perform()
        wait_for(lambda: driver.execute_script("return document.getElementById('clip-zoom').dataset.zoom"), 60,
                 "the clip zoom")
        drawn = [int(v) for v in driver.execute_script("return document.getElementById('clip-zoom').dataset.zoomBox")
                 .split(",")]
        assert abs(drawn[0] - (x - 1)) <= 1 and abs(drawn[2] - (w + 2)) <= 2, (drawn, (x, y, w, h))
        sizes = driver.execute_script("""return ['.zoom-fused', '.zoom-single'].map((c) =>
            [document.querySelector('#clip-zoom ' + c).naturalWidth, document.querySelector('#clip-zoom ' + c).naturalHeight])""")
        assert sizes == [[4 * drawn[2], 4 * drawn[3]]] * 2, (sizes, drawn)
        text = find("#clip-zoom").text
        assert "Machine-fused from 16 frames" in text and "around 0.800 s" in text, text
        assert "One frame (bicubic ×4)" in text and "Frames 16 of 16" in text, text
        assert find("#clip-zoom .zoom-save").get_attribute("download").startswith("pass-zoom-0.800s-")
        shot = Path(os.environ.get("ULTRARES_SCREENSHOT_DIR", tmp_path)) / "web-clip-zoom-test.png"
        driver.save_screenshot(str(shot))


def make_screenshot(dest: Path) -> None:
    """The README screenshot: a traffic frame upscaled with the best model present."""
    import av

    from ultrares_stream.models.registry import DEFAULT_MODEL, ENTRIES, PAIRS, local_path
    from ultrares_stream.settings import data_dir
    from ultrares_stream.web.app import create_app

    weights = data_dir() / "weights"
    os.environ.setdefault("ULTRARES_WEIGHTS_DIR", str(weights))
    model = DEFAULT_MODEL if all(local_path(ENTRIES[m]) for m in PAIRS[DEFAULT_MODEL]) else "realesr-animevideov3"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with av.open(str(data_dir() / "video" / "cctv-motorway-320x240.avi")) as container:
            frame = next(f for i, f in enumerate(container.decode(video=0)) if i == 30)
        frame.to_image().save(tmp / "cctv-motorway.png")
        app = create_app(default_model=model, device="cpu")
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.by import By

        with serve(app) as base, chromium(tmp, size=(1440, 860)) as driver:
            driver.get(base + "/")
            wait_for(lambda: driver.execute_script("return document.body.dataset.ready"), 30, "models")
            driver.find_element(By.ID, "file-input").send_keys(str(tmp / "cctv-motorway.png"))
            driver.find_element(By.ID, "upscale-btn").click()
            wait_for(lambda: _result_count(driver), 300, "the result")
            ActionChains(driver).drag_and_drop_by_offset(driver.find_element(By.ID, "divider-handle"), -60, 0).perform()
            time.sleep(0.5)
            driver.save_screenshot(str(dest))
    print(f"wrote {dest} (model {model})")


if __name__ == "__main__":
    make_screenshot(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/web-screenshot.png"))
