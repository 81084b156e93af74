"""The studio's Video tab without a browser: its job compresses through `fieldstudio video compress`'s
functions, compares with x264/x265, decodes, names a corrupt upload in one line, and stops on Cancel."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("imageio_ffmpeg", reason="video files need imageio-ffmpeg: pip install -e '.[video]'")

from fieldstudio.apps.studio import common, tab_video  # noqa: E402
from fieldstudio.apps.studio.jobs import CANCELLED, DONE, FAILED, JobManager  # noqa: E402
from fieldstudio.apps.video import compress  # noqa: E402
from fieldstudio.apps.video_train import SessionStopped  # noqa: E402
from fieldstudio.codecs import fsv  # noqa: E402
from fieldstudio.codecs.quality import frame_metrics, summarize, to_uint8  # noqa: E402
from fieldstudio.datasets.videos import procedural_clip, read_video, write_frames  # noqa: E402
from fieldstudio.errors import ConfigError, InputError  # noqa: E402

T, H, W = 6, 32, 40


@pytest.fixture
def studio(tmp_path):
    s = common.Studio(JobManager(max_running=1, max_queued=2), tmp_path / "runs", max_upload_mb=5)
    yield s
    s.manager.shutdown()


@pytest.fixture(scope="module")
def tiny_mp4(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "tiny.mp4"
    write_frames(procedural_clip(T, H, W, seed=3), path, fps=12)
    return path


def test_compress_callback_counts_every_step_and_stops(tmp_path):
    seen = []
    compress(None, out=str(tmp_path / "a.fsv"), steps=10, max_frames=2, bpp=0.5, progress=False, device="cpu",
             callback=lambda step, rec: seen.append(step))
    assert seen == list(range(1, 11))  # training and fine-tuning counted as one run of 10 steps
    with pytest.raises(SessionStopped, match="stopped at step 3"):
        compress(None, out=str(tmp_path / "b.fsv"), steps=10, max_frames=2, progress=False, device="cpu",
                 callback=lambda step, rec: step >= 3)
    assert not (tmp_path / "b.fsv").exists()


def test_video_job_compresses_compares_and_decodes(studio, tiny_mp4):
    steps = 30
    job_id = tab_video.start_compress(studio, str(tiny_mp4), 0.5, "", steps, 0, False, True)
    job = studio.manager.wait(job_id, 120)
    assert job.status == DONE, job.error
    r = job.result
    assert job.step == steps and any("psnr" in h for h in job.history)  # progress reached the page
    assert (r["frames"], r["height"], r["width"]) == (T, H, W)
    # the table's figures are the file's own: decode the .fsv again and measure it
    lib = fsv.load(job.outputs["fsv"], "cpu")
    again = summarize(frame_metrics(to_uint8(lib.decode(0)), read_video(tiny_mp4)[0]))
    assert again["psnr"] == pytest.approx(r["psnr"], abs=1e-3)
    assert r["bpp"] == pytest.approx(Path(job.outputs["fsv"]).stat().st_size * 8 / (T * H * W))
    assert r["psnr"] > 15
    view = tab_video.result_view(job)
    assert [p["codec"].split(" ")[0] for p in view["points"]] == ["fieldstudio", "x264", "x265"]
    for b in r["baselines"].values():  # at the neural point's rate (or the nearest above, if none fits)
        assert b["bpp"] <= r["bpp"] or b["crf"] == 51
        assert np.isfinite(b["psnr"])
    assert len(view["rows"]) == 3 and all(len(row) == len(tab_video.TABLE_HEADERS) for row in view["rows"])
    assert len(view["gallery"]) == tab_video.SHOWN_FRAMES
    decoded, _ = read_video(job.outputs["mp4"])
    assert decoded.shape == (T, H, W, 3)
    assert [f.rsplit(".", 1)[1] for f in view["files"]] == ["fsv", "mp4", "json"]


def test_corrupt_or_wrong_upload_is_one_line(studio, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    with pytest.raises(InputError, match=r"cannot read video broken\.mp4") as exc:
        tab_video.start_compress(studio, str(broken), 0.3, "", 10, 0, False, False)
    assert "\n" not in str(exc.value)
    text = tmp_path / "clip.txt"
    text.write_text("not a video")
    with pytest.raises(InputError, match="not a file type this tab reads"):
        tab_video.start_compress(studio, str(text), 0.3, "", 10, 0, False, False)
    with pytest.raises(ConfigError, match="steps must be at least 1"):
        tab_video.start_compress(studio, None, 0.3, "", 0, 0, False, False)
    # a file that goes bad after the check fails the job with the pipeline's line, no traceback
    job = studio.manager.submit(lambda ctx: tab_video.video_job(ctx, video=str(broken), bpp=0.3, size=None, steps=5,
                                                                frames=None, fso=False, compare=False,
                                                                out=tmp_path / "out"),
                                kind="video", label="broken", total=5)
    job = studio.manager.wait(job.id, 30)
    assert job.status == FAILED and job.traceback is None
    assert job.error.startswith("cannot read video broken.mp4") and "\n" not in job.error


def test_cancel_stops_the_compression_and_writes_no_file(studio, tiny_mp4):
    job_id = tab_video.start_compress(studio, str(tiny_mp4), 0.3, "", 100_000, 2, False, True)
    job = studio.manager.get(job_id)
    deadline = time.time() + 30
    while job.step < 3 and time.time() < deadline:
        time.sleep(0.02)
    assert job.step >= 3 and job.eta_seconds is not None
    assert studio.manager.cancel(job_id)
    job = studio.manager.wait(job_id, 30)
    assert job.status == CANCELLED and job.step < 100_000
    assert not list(job.out.glob("*.fsv")) and "fsv" not in job.outputs
