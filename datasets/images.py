"""Reading images for fitting: PNG/JPEG/TIFF (8/16-bit, gray, RGBA) and EXR where a backend can.

Everything comes back as float32 ``[H, W, C]`` in [0, 1] (EXR: linear values as stored), plus a
description that goes into the run's config so the run knows what it was fitted to.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fieldstudio.errors import InputError

#: photos that ship inside scikit-image's wheel and so load on a machine with no network
BUNDLED = ("astronaut", "camera", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
           "brick", "grass", "gravel", "coins", "moon", "text", "clock", "colorwheel")
DEFAULT_IMAGE = "astronaut"


def bundled_image(name: str = DEFAULT_IMAGE) -> np.ndarray:
    """A scikit-image sample photo by name (offline), as float32 [H, W, C] in [0, 1]."""
    import skimage.data

    if name not in BUNDLED:
        raise InputError(f"'{name}' is not a bundled image", f"use one of: {', '.join(BUNDLED)}")
    try:
        arr = getattr(skimage.data, name)()
    except Exception as exc:  # pragma: no cover - depends on the scikit-image build
        raise InputError(f"could not load scikit-image's '{name}' photo ({exc})", "pass an image path instead") from exc
    return _to_float(arr, f"skimage:{name}")


def _to_float(arr: np.ndarray, where: str) -> np.ndarray:
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise InputError(f"{where}: unsupported image shape {arr.shape}", "use a gray, gray+alpha, RGB or RGBA image")
    if arr.dtype == np.uint8:
        out = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        out = arr.astype(np.float32) / 65535.0
    elif arr.dtype == bool:
        out = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.floating):
        out = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.integer):
        out = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
    else:
        raise InputError(f"{where}: unsupported pixel type {arr.dtype}", "save it as an 8- or 16-bit PNG")
    if not np.isfinite(out).all():
        raise InputError(f"{where}: the image contains NaN or infinite values", "fix or re-export the image")
    if out.size == 0 or out.shape[0] < 2 or out.shape[1] < 2:
        raise InputError(f"{where}: the image is empty or smaller than 2x2 pixels", "use a larger image")
    return out


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as float32 ``[H, W, C]``; a clear `InputError` if it cannot be read."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"image not found: {path}", "check the path (or omit it to fit the bundled default photo)")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not an image", "pass an image file")
    suffix = path.suffix.lower()
    if suffix == ".exr":
        return _load_exr(path)
    try:
        from PIL import Image, UnidentifiedImageError

        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.array(im).astype(np.uint16 if im.mode.startswith("I;16") else np.int32)
                if arr.dtype == np.int32:
                    arr = np.clip(arr, 0, 65535).astype(np.uint16)
            elif im.mode in ("P", "CMYK", "YCbCr", "LAB", "HSV", "1"):
                arr = np.array(im.convert("RGBA" if "transparency" in im.info else "RGB"))
            else:
                arr = np.array(im)
    except UnidentifiedImageError:
        arr = _load_with_imageio(path)
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"cannot read image {path}: {exc}", "the file looks corrupt or truncated; re-export it as PNG") from exc
    return _to_float(arr, str(path))


def _load_with_imageio(path: Path) -> np.ndarray:
    try:
        import imageio.v3 as iio

        return np.asarray(iio.imread(path))
    except Exception as exc:
        raise InputError(f"cannot read image {path}: not a format we recognise ({type(exc).__name__})",
                         "use PNG, JPEG, TIFF or EXR") from exc


def _load_exr(path: Path) -> np.ndarray:
    try:
        import imageio.v3 as iio

        arr = np.asarray(iio.imread(path))
    except Exception as exc:
        raise InputError(f"cannot read EXR {path}: no EXR backend available ({type(exc).__name__})",
                         "install FreeImage (apt-get install libfreeimage3) or convert the file to 16-bit PNG") from exc
    return _to_float(arr.astype(np.float32), str(path))


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """The central ``size`` x ``size`` square (or the whole image along a shorter side)."""
    h, w = img.shape[:2]
    ch, cw = min(size, h), min(size, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    return img[top:top + ch, left:left + cw]


def drop_alpha(img: np.ndarray, background: float = 1.0) -> np.ndarray:
    """Composite RGBA / gray+alpha onto a constant background (fitting targets have no alpha)."""
    c = img.shape[2]
    if c in (2, 4):
        rgb, a = img[..., :-1], img[..., -1:]
        return rgb * a + background * (1 - a)
    return img
