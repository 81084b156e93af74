"""Image reading: bit depths, channel layouts, and clear errors."""

import numpy as np
import pytest
from PIL import Image

from fieldstudio.datasets.images import bundled_image, center_crop, drop_alpha, load_image
from fieldstudio.errors import InputError


def test_8bit_rgb_and_gray(tmp_path):
    rgb = (np.random.default_rng(0).random((5, 7, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.shape == (5, 7, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, rgb / 255.0, atol=1e-7)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "g.png")
    assert load_image(tmp_path / "g.png").shape == (5, 7, 1)


def test_16bit_gray_keeps_precision(tmp_path):
    arr = np.array([[0, 1, 65535], [30000, 2, 40000]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "g16.png")
    out = load_image(tmp_path / "g16.png")
    np.testing.assert_allclose(out[..., 0], arr / 65535.0, atol=1e-7)


def test_rgba_and_alpha_compositing(tmp_path):
    arr = np.zeros((4, 4, 4), dtype=np.uint8)
    arr[..., 0] = 255
    arr[..., 3] = 0
    arr[0, 0, 3] = 255
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    assert img.shape == (4, 4, 4)
    flat = drop_alpha(img, background=1.0)
    np.testing.assert_allclose(flat[0, 0], [1, 0, 0])
    np.testing.assert_allclose(flat[1, 1], [1, 1, 1])


def test_jpeg(tmp_path):
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(tmp_path / "a.jpg", quality=95)
    assert abs(load_image(tmp_path / "a.jpg").mean() - 128 / 255) < 0.01


def test_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_image(tmp_path / "x.png")
    (tmp_path / "t.png").write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="cannot read image"):
        load_image(tmp_path / "t.png")
    with pytest.raises(InputError, match="folder"):
        load_image(tmp_path)
    with pytest.raises(InputError, match="bundled"):
        bundled_image("lily")


def test_bundled_and_crop():
    img = bundled_image("astronaut")
    assert img.shape == (512, 512, 3)
    assert center_crop(img, 256).shape == (256, 256, 3)
