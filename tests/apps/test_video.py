"""`fieldstudio video ...` end to end: compress, info, decompress, append, and bad input."""

import json

import numpy as np
import pytest

from fieldstudio.apps.cli import main
from fieldstudio.codecs import fsv
from fieldstudio.datasets.videos import procedural_clip, read_video, write_frames

FAST = ["--steps", "12", "--quiet", "--device", "cpu"]


@pytest.fixture()
def frames_dir(tmp_path):
    write_frames(procedural_clip(4, 32, 32, seed=5), tmp_path / "in")
    return tmp_path / "in"


def test_compress_info_decompress_append(tmp_path, frames_dir, capsys):
    out = tmp_path / "clip.fsv"
    assert main(["video", "compress", str(frames_dir), "--out", str(out), "--bpp", "2", "--capacity", "0.5"] + FAST) == 0
    assert out.exists()
    metrics = json.loads((tmp_path / "clip.metrics.json").read_text())
    assert len(metrics["per_frame"]["psnr"]) == 4 and metrics["bpp"] == pytest.approx(out.stat().st_size * 8 / (4 * 32 * 32))
    assert main(["video", "info", str(out)]) == 0
    assert "1 video(s)" in capsys.readouterr().out
    assert main(["video", "decompress", str(out), "--out", str(tmp_path / "dec")]) == 0
    dec, _ = read_video(tmp_path / "dec")
    assert dec.shape == (4, 32, 32, 3)
    expected = fsv.load(out).decode(0)
    assert np.array_equal(dec, (expected.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy())
    assert main(["video", "append", str(out)] + FAST) == 0
    assert len(fsv.load(out).videos) == 2
    assert main(["video", "decompress", str(out), "--out", str(tmp_path / "v.mp4"), "--video", "2"]) == 0
    assert (tmp_path / "v.mp4").stat().st_size > 0
    # after the append, video 1 decodes as before
    assert np.array_equal(fsv.load(out).decode(0).numpy(), expected.numpy())


def test_bad_input_exits_2_with_one_line_and_overwrites_nothing(tmp_path, frames_dir, capsys):
    out = tmp_path / "clip.fsv"
    assert main(["video", "compress", str(frames_dir), "--out", str(out)] + FAST) == 0
    good = out.read_bytes()
    capsys.readouterr()

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\0" * 300)
    assert main(["video", "compress", str(broken), "--out", str(out)] + FAST) == 2
    assert main(["video", "append", str(out), str(broken)] + FAST) == 2
    other = tmp_path / "other"
    write_frames(procedural_clip(2, 40, 40), other)
    assert main(["video", "append", str(out), str(other)] + FAST) == 2  # frame size differs from the library
    assert out.read_bytes() == good

    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    corrupt = tmp_path / "corrupt.fsv"
    corrupt.write_bytes(bytes(bad))
    assert main(["video", "decompress", str(corrupt), "--out", str(tmp_path / "d")]) == 2
    assert main(["video", "append", str(corrupt), str(frames_dir)] + FAST) == 2
    assert corrupt.read_bytes() == bytes(bad)
    assert main(["video", "info", str(tmp_path / "missing.fsv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 6 and all(line.startswith("fieldstudio: error:") for line in err), err
    assert "checksum mismatch" in "\n".join(err)


def test_compress_with_cam_stores_the_time_grids(tmp_path, frames_dir, capsys):
    out = tmp_path / "cam.fsv"
    assert main(["video", "compress", str(frames_dir), "--out", str(out), "--bpp", "2", "--cam"] + FAST) == 0
    lib = fsv.load(out)
    assert lib.field.cams is not None and lib.field.config["cam"]["norm"] == "instance"
    metrics = json.loads((tmp_path / "cam.metrics.json").read_text())
    assert metrics["config"]["cam"]["resolution"] == [2]  # 4 frames: the smallest grid
    # the decoder's grids are the trained ones: beta moved away from 0 and survives the file
    betas = [float(c.grid.detach()[0, 1].abs().max()) for c in lib.field.cams[0]]
    assert max(betas) > 0
    first = lib.decode(0)
    assert main(["video", "append", str(out)] + FAST) == 0
    again = fsv.load(out)
    assert len(again.field.cams) == 2
    assert np.array_equal(again.decode(0).numpy(), first.numpy())
