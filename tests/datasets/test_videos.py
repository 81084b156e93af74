"""Video reading (files and folders of frames), the generated clip, and the x264/x265 baselines."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fieldstudio.codecs.baseline import at_bpp
from fieldstudio.datasets.videos import procedural_clip, read_video, write_frames
from fieldstudio.errors import InputError

CARPHONE = Path(__file__).resolve().parents[3] / "shared" / "data" / "video_carphone"


def test_procedural_clip_is_deterministic_and_moves():
    a, b = procedural_clip(6, 32, 40, seed=3), procedural_clip(6, 32, 40, seed=3)
    assert a.shape == (6, 32, 40, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert np.abs(a[0].astype(int) - a[5]).mean() > 5  # frames differ
    assert not np.array_equal(a, procedural_clip(6, 32, 40, seed=4))


def test_folder_of_frames_round_trip_and_mixed_sizes(tmp_path):
    clip = procedural_clip(4, 24, 32)
    write_frames(clip, tmp_path / "f")
    frames, fps = read_video(tmp_path / "f")
    assert np.array_equal(frames, clip) and fps == 24.0
    assert read_video(tmp_path / "f", max_frames=2)[0].shape[0] == 2
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "f" / "frame_9999.png")
    with pytest.raises(InputError, match="mixed sizes"):
        read_video(tmp_path / "f")


def test_unreadable_missing_and_unsupported_videos(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video" * 50)
    with pytest.raises(InputError, match="cannot read video broken.mp4"):
        read_video(bad)
    with pytest.raises(InputError, match="not found"):
        read_video(tmp_path / "nope.mp4")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(InputError, match="unsupported video type"):
        read_video(tmp_path / "x.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no frames"):
        read_video(tmp_path / "empty")


def test_mp4_written_and_read_back(tmp_path):
    clip = procedural_clip(5, 32, 48)
    write_frames(clip, tmp_path / "c.mp4", fps=10)
    frames, fps = read_video(tmp_path / "c.mp4")
    assert frames.shape == clip.shape and abs(fps - 10) < 0.1
    assert np.abs(frames.astype(int) - clip).mean() < 6  # near-lossless H.264 (crf 12, 4:2:0)


@pytest.mark.skipif(not CARPHONE.exists(), reason="shared/data/video_carphone is not present")
def test_carphone_mp4_matches_its_png_frames():
    mp4, fps = read_video(CARPHONE / "carphone_pristine.mp4", max_frames=4)
    pngs, _ = read_video(CARPHONE / "frames", max_frames=4)
    assert mp4.shape == (4, 144, 176, 3) and abs(fps - 29.97) < 0.01
    assert np.array_equal(mp4, pngs)


def test_x264_and_x265_hit_the_bpp_target_and_are_measured_like_the_neural_codec():
    clip = procedural_clip(12, 64, 80)
    for codec in ("x264", "x265"):
        r = at_bpp(clip, codec, 0.5)
        assert 0.3 < r["bpp"] <= 0.5, r["bpp"]
        assert 20 < r["psnr"] < 60 and len(r["per_frame"]["psnr"]) == 12
