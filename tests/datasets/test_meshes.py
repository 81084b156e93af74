"""Mesh reading: formats, welding, repairs, normalisation, the default shape, and clear errors."""

import os
import re
from pathlib import Path

import numpy as np
import pytest
import trimesh

from fieldstudio.datasets.meshes import UnitCube, clean_mesh, default_shape, load_mesh, normalize_mesh
from fieldstudio.errors import InputError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.mark.parametrize("ext", ["obj", "ply", "stl", "off", "glb"])
def test_formats_round_trip(tmp_path, ext):
    src = trimesh.creation.icosphere(2, radius=2.0)
    src.vertices += [1.0, -3.0, 0.5]
    path = tmp_path / f"sphere.{ext}"
    src.export(str(path))
    mesh, report = load_mesh(path)
    assert report.faces == len(src.faces) and report.watertight
    np.testing.assert_allclose(mesh.bounds, src.bounds, atol=1e-5)
    assert mesh.volume > 0  # outward orientation


def test_seams_are_welded_and_inside_out_meshes_flipped():
    box = trimesh.creation.box()
    # split every face's vertices apart (as UV seams do in OBJ files) and invert the winding
    verts = box.vertices[box.faces].reshape(-1, 3)
    faces = np.arange(len(verts)).reshape(-1, 3)[:, ::-1]
    mesh, report = clean_mesh(verts, faces)
    assert report.watertight and report.vertices == 8 and report.merged_vertices == len(verts) - 8
    assert report.flipped_orientation and mesh.volume == pytest.approx(1.0)


def test_degenerate_and_duplicate_faces_are_dropped_and_counted():
    box = trimesh.creation.box()
    v = np.vstack([box.vertices, [[5, 5, 5], [6, 5, 5], [7, 5, 5]]])  # three collinear points
    f = np.vstack([box.faces, [[8, 9, 10], [0, 0, 1]], box.faces[:2]])
    mesh, report = clean_mesh(v, f)
    assert report.dropped_degenerate == 2 and report.dropped_duplicate == 2
    assert report.faces == 12 and report.watertight and len(mesh.vertices) == 8


@pytest.mark.skipif(not (SHARED / "mesh_spot").exists(), reason="shared data not present")
def test_spot_welds_into_a_closed_mesh():
    mesh, report = load_mesh(SHARED / "mesh_spot" / "spot.obj")
    assert report.vertices == 2930 and report.faces == 5856 and report.watertight
    assert mesh.volume == pytest.approx(0.718, abs=1e-3)


def test_unit_cube_normalisation_round_trip():
    mesh = trimesh.creation.box(extents=(4.0, 2.0, 1.0))
    mesh.vertices += [10.0, 0.0, -7.0]
    unit, norm = normalize_mesh(mesh, margin=0.05)
    lo, hi = unit.bounds
    assert (hi - lo).max() == pytest.approx(0.9) and np.allclose((lo + hi) / 2, 0.5)
    np.testing.assert_allclose(norm.from_unit(unit.vertices), mesh.vertices, atol=1e-12)
    again = UnitCube.from_dict(norm.as_dict())
    assert again == norm and norm.distance_from_unit(0.9) == pytest.approx(4.0)


def test_default_shape_is_closed_deterministic_and_has_a_hole():
    a, report = default_shape()
    b, _ = default_shape()
    assert report.watertight and a.euler_number == 0  # one handle (the ring)
    np.testing.assert_array_equal(a.vertices, b.vertices)
    np.testing.assert_array_equal(a.faces, b.faces)
    assert a.volume > 0


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("name,data,needle", [
    ("garbage.ply", b"ply\nformat binary_little_endian 1.0\n" + bytes(range(256)) * 2, "cannot read mesh"),
    ("garbage.glb", bytes(range(256)), "cannot read mesh"),
    ("garbage.obj", b"\x00\x01 not an obj \xff" * 20, "no geometry"),
    ("empty.obj", b"# nothing here\n", "no geometry"),
    ("zero.stl", b"", "empty (0 bytes)"),
    ("points.obj", b"v 0 0 0\nv 1 0 0\nv 0 1 0\n", "point cloud (3 points"),
    ("lines.obj", b"v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\nf 1 1 2\n", "all 2 faces are degenerate"),
    ("badindex.obj", b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 9\n", "cannot read mesh"),
    ("mesh.xyz", b"0 0 0\n", "not a mesh format"),
], ids=lambda v: v if isinstance(v, str) and "." in v and len(v) < 20 else "")
def test_bad_files_give_clear_errors(tmp_path, name, data, needle):
    with pytest.raises(InputError, match=re.escape(needle)) as info:
        load_mesh(_write(tmp_path / name, data))
    assert info.value.fix  # every error names a fix


def test_point_cloud_ply_and_missing_paths(tmp_path):
    trimesh.PointCloud(np.random.default_rng(0).random((40, 3))).export(str(tmp_path / "cloud.ply"))
    with pytest.raises(InputError, match="point cloud"):
        load_mesh(tmp_path / "cloud.ply")
    with pytest.raises(InputError, match="mesh not found"):
        load_mesh(tmp_path / "nope.obj")
    with pytest.raises(InputError, match="is a folder"):
        load_mesh(tmp_path)
    os.makedirs(tmp_path / "x.obj")
    with pytest.raises(InputError, match="is a folder"):
        load_mesh(tmp_path / "x.obj")
