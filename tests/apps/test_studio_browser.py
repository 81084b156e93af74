"""The studio in a real browser: `fieldstudio app` in its own process, driven by Playwright through
Debian's headless Chromium. Skips (saying why) without gradio, Playwright or Chromium."""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason="the studio needs the app extra: pip install -e '.[app]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright: pip install -e '.[test]'")
CHROMIUM = os.environ.get("FIELDSTUDIO_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("needs Debian's chromium (apt-get install chromium)", allow_module_level=True)

STEPS, CROP = 80, 64


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def app_url(tmp_path):
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    log = open(tmp_path / "app.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "fieldstudio.apps.cli", "app", "--port", str(port), "--max-jobs", "2",
                             "--max-upload-mb", "5", "--workdir", str(tmp_path / "runs")],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the app exited with {proc.returncode}: {(tmp_path / 'app.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.time() > deadline:
                    pytest.fail("the app did not start listening within 90 s")
                time.sleep(0.5)
        yield url
    finally:
        os.kill(proc.pid, signal.SIGTERM)  # by its PID, as we started it
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def _poll(fn, timeout: float, what: str, page=None, shot: Path | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.5)
    if page is not None and shot is not None:
        page.screenshot(path=str(shot), full_page=True)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def _table(page) -> dict[str, list[str]]:
    # gradio's Dataframe draws its rows as ARIA grid rows (a hidden table only sizes the columns)
    rows = page.locator("#image-table [role=row][data-index]")
    out = {}
    for i in range(rows.count()):
        cells = [c.strip() for c in rows.nth(i).locator("[role=gridcell]").all_inner_texts()]
        if cells and cells[0]:
            out[cells[0]] = cells
    return out


def test_studio_in_a_browser(app_url, tmp_path):
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        outside = []  # the page must load nothing from outside the machine (fonts, scripts, analytics)
        page.on("request", lambda r: None if r.url.startswith((app_url, "data:", "blob:")) else outside.append(r.url))
        try:
            page.goto(app_url, wait_until="domcontentloaded")
            page.wait_for_selector("#image-start", timeout=60_000)
            for tab in ("Image", "SDF", "Scene", "Geo", "Video", "Jobs"):  # every pipeline on main has its tab
                assert page.get_by_role("tab", name=tab).count() == 1, tab

            # --- a race of the two default encoders (hash grid, SIREN) on the bundled photo ---------
            page.fill("#image-steps input", str(STEPS))
            page.fill("#image-crop input", str(CROP))
            page.click("#image-start")
            first: dict[str, float] = {}

            def race_done():
                for enc, cells in _table(page).items():
                    # the first live training PSNR seen in the first half of the fit: one read at the
                    # end (a fast fit) is a batch's PSNR, which may sit above the final whole-image one
                    if cells[5] and cells[3] and float(cells[3]) <= STEPS // 2 and enc not in first:
                        first[enc] = float(cells[5])
                return page.inner_text("#image-status").count("done") == 2

            _poll(race_done, 240, "both fits to finish", page, shots / "race-timeout.png")
            points = int(page.inner_text("#image-curve-points").split()[1])
            assert points >= 4, points
            assert page.locator("#image-curve-step canvas, #image-curve-step svg").count() >= 1
            _poll(lambda: page.locator("#image-gallery img").count() >= 4, 30, "the reconstructions and error maps")
            captions = page.inner_text("#image-gallery")
            assert "hash grid: reconstruction" in captions and "SIREN: reconstruction" in captions
            table = _table(page)
            assert set(table) == {"hash grid", "SIREN"}, table
            assert first, "no live PSNR was seen in the table while the fits ran"
            for enc, cells in table.items():
                params, steps, rate, live, final, ssim = (float(cells[i]) for i in (2, 3, 4, 5, 6, 7))
                assert all(math.isfinite(v) for v in (params, rate, live, final, ssim)), cells
                assert steps == STEPS and params > 0 and rate > 0 and 0 < ssim <= 1, cells
                assert final > 15 and final > first.get(enc, -1), (enc, first, cells)  # PSNR rose
            names = page.locator("#image-files a[download]").evaluate_all("els => els.map(e => e.download)")
            for slug in ("hashgrid", "siren"):  # a PNG and the run folder (checkpoint) per encoder
                assert any(n.endswith(f"{slug}-reconstruction.png") for n in names), names
                assert any(n.endswith(f"{slug}.zip") for n in names), names
            race_shot = shots / "studio-image-race.png"
            page.screenshot(path=str(race_shot), full_page=True)

            # --- cancel a running job ---------------------------------------------------------------
            page.fill("#image-steps input", "1000000")
            page.click("#image-start")
            _poll(lambda: "step" in page.inner_text("#image-status") and "step 0/" not in page.inner_text(
                "#image-status"), 120, "the long fits to be running")
            page.click("#image-cancel")
            _poll(lambda: page.inner_text("#image-status").count("cancelled") == 2, 60, "the fits to stop",
                  page, shots / "cancel-timeout.png")
            assert "checkpoint is kept" in page.inner_text("#image-status")

            # --- a corrupt upload gets a clear message --------------------------------------------------
            bad = tmp_path / "corrupt.png"
            bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not really an image")
            page.set_input_files("#image-upload input[type=file]", str(bad))
            page.wait_for_timeout(1500)
            page.fill("#image-steps input", "10")
            page.click("#image-start")
            msg = _poll(lambda: (t := page.inner_text("#image-message")).startswith("Error") and t, 60,
                        "the error message", page, shots / "upload-timeout.png")
            assert "corrupt.png" in msg and "->" in msg, msg
            assert outside == [], outside
            final_shot = shots / "studio-final.png"
            page.screenshot(path=str(final_shot), full_page=True)

            # --- the Video tab draws its controls (its jobs are tested without a browser) -----------
            page.get_by_role("tab", name="Video").click()
            page.wait_for_selector("#video-start", state="visible", timeout=10_000)
            assert page.locator("#video-upload, #video-bpp, #video-cancel").count() == 3
        finally:
            browser.close()
    print(f"\nscreenshots: {race_shot} {final_shot}")
    assert race_shot.stat().st_size > 20_000
