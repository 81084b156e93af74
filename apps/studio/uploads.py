"""Checks on files that arrive through the browser, before any pipeline sees them.

The type is judged by extension and, for zips, by the archive's own structure; the size limit is
the studio's (``--max-upload-mb``). The pipelines then read the files with their own loaders,
which name anything wrong inside them.
"""

from __future__ import annotations

import zipfile
from pathlib import Path, PurePosixPath

from fieldstudio.errors import InputError

IMAGE_TYPES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".exr", ".bmp", ".webp")
MESH_TYPES = (".obj", ".ply", ".stl", ".off", ".glb", ".gltf")
POINT_TYPES = (".csv", ".geojson", ".json", ".txt")
SCENE_TYPES = (".zip",)
VIDEO_TYPES = (".mp4", ".avi", ".gif", ".mov", ".webm")


def check_upload(path: str | Path, allowed: tuple[str, ...], max_mb: float, what: str) -> Path:
    """The upload's path if its type is one of ``allowed`` and it is at most ``max_mb`` MB."""
    p = Path(path)
    name = p.name
    if not p.is_file():
        raise InputError(f"the uploaded {what} '{name}' did not arrive", "upload it again")
    if p.suffix.lower() not in allowed:
        raise InputError(f"'{name}' is not a file type this tab reads", f"upload a {what}: one of {', '.join(allowed)}")
    size_mb = p.stat().st_size / 1e6
    if size_mb > max_mb:
        raise InputError(f"'{name}' is {size_mb:.1f} MB, over the {max_mb:g} MB upload limit",
                         "upload a smaller file, or start the app with a larger --max-upload-mb")
    if p.stat().st_size == 0:
        raise InputError(f"'{name}' is empty", f"upload a {what} file with content")
    return p


def extract_zip(path: str | Path, dest: str | Path, max_mb: float) -> Path:
    """Unpack a scene zip into ``dest`` and return the folder that holds the scene.

    Refuses members that would land outside ``dest`` and archives that unpack to more than
    ``max_mb`` MB (a zip bomb must not fill the disk). A zip holding one top-level folder yields
    that folder.
    """
    dest = Path(dest)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"'{Path(path).name}' is not a readable zip archive ({exc})",
                         "zip the scene folder (images and poses) and upload that") from None
    with zf:
        members = zf.infolist()
        total = sum(m.file_size for m in members) / 1e6
        if total > max_mb:
            raise InputError(f"'{Path(path).name}' unpacks to {total:.0f} MB, over the {max_mb:g} MB limit",
                             "upload a smaller scene (fewer or downscaled images)")
        for m in members:
            parts = PurePosixPath(m.filename).parts
            if m.filename.startswith("/") or ".." in parts:
                raise InputError(f"'{Path(path).name}' holds an unsafe path '{m.filename}'",
                                 "zip the scene folder with relative paths")
        zf.extractall(dest)
    entries = [e for e in dest.iterdir() if not e.name.startswith((".", "__MACOSX"))]
    if not entries:
        raise InputError(f"'{Path(path).name}' is an empty archive", "zip the scene folder and upload that")
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else dest
