"""Reading triangle meshes for SDF fitting, normalising them into the unit cube, and the default shape.

* `load_mesh(path)` reads OBJ / PLY / STL / OFF / GLB (anything trimesh reads) as one triangle mesh:
  scenes are concatenated, texture seams welded (vertices merged by position), degenerate and
  duplicate faces dropped (and counted), and a clear `InputError` raised for a file that is missing,
  unreadable, empty, a point cloud, or has no usable faces.
* `UnitCube` is the similarity that maps the mesh's bounding box into [0, 1]^3 with a margin; it is
  stored in the run's config so extracted meshes go back to the original units.
* `default_shape()` builds the bundled default shape procedurally (no file, no network): marching
  cubes of an analytic smooth union of a torus, a sphere and a capsule, welded into a closed mesh.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fieldstudio.errors import InputError

#: formats `load_mesh` is documented and tested for (trimesh reads a few more)
MESH_FORMATS = (".obj", ".ply", ".stl", ".off", ".glb", ".gltf")
#: name under which the procedural default shape is recorded in run configs
DEFAULT_SHAPE = "default:ring-sphere-capsule"
#: fraction of the unit cube left empty on each side when normalising
DEFAULT_MARGIN = 0.05


def _trimesh():
    try:
        import trimesh
    except ImportError as exc:  # pragma: no cover - trimesh is a core dependency
        raise InputError("reading meshes needs the 'trimesh' package", "pip install trimesh") from exc
    return trimesh


@dataclass
class MeshReport:
    """What `load_mesh` found and repaired; goes into the run's config."""

    source: str
    vertices: int
    faces: int
    watertight: bool
    dropped_degenerate: int = 0
    dropped_duplicate: int = 0
    merged_vertices: int = 0
    flipped_orientation: bool = False
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "vertices": self.vertices, "faces": self.faces, "watertight": self.watertight,
                "dropped_degenerate_faces": self.dropped_degenerate, "dropped_duplicate_faces": self.dropped_duplicate,
                "merged_vertices": self.merged_vertices, "flipped_orientation": self.flipped_orientation}


def _read(path: Path):
    """trimesh's reading of ``path``: a Trimesh, a PointCloud, or a Scene of them."""
    trimesh = _trimesh()
    try:
        return trimesh.load(str(path), process=False)
    except Exception as exc:  # trimesh raises many kinds (ValueError, KeyError, struct.error, ...)
        msg = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise InputError(f"cannot read mesh {path}: {msg}",
                         "the file looks corrupt or is not a mesh; re-export it as OBJ or PLY") from exc


def _point_cloud_error(path: Path, n: int) -> InputError:
    return InputError(f"{path} holds a point cloud ({n} points, no faces), not a mesh",
                      "fit sdf needs a triangle mesh: reconstruct a surface first (e.g. Poisson reconstruction)")


def load_mesh(path: str | Path, *, min_face_area: float = 0.0):
    """Read a triangle mesh; returns ``(trimesh.Trimesh, MeshReport)``.

    Vertices are merged by position (OBJ files split them along UV seams), unreferenced vertices
    and faces whose area is ``<= min_face_area`` (relative to the squared bounding-box diagonal)
    or that repeat a vertex are dropped and counted.
    """
    trimesh = _trimesh()
    path = Path(path)
    if not path.exists():
        raise InputError(f"mesh not found: {path}", "check the path (or omit it to fit the bundled default shape)")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not a mesh", "pass an OBJ, PLY, STL, OFF or GLB file")
    if path.stat().st_size == 0:
        raise InputError(f"mesh file {path} is empty (0 bytes)", "re-export the mesh")
    if path.suffix.lower() not in MESH_FORMATS:
        raise InputError(f"{path}: '{path.suffix or '(no extension)'}' is not a mesh format fieldstudio reads",
                         f"use one of {', '.join(MESH_FORMATS)}")
    loaded = _read(path)
    if isinstance(loaded, trimesh.Scene):  # GLB / multi-object files: concatenate the meshes
        geoms = list(loaded.geometry.values())
        meshes = [g for g in geoms if isinstance(g, trimesh.Trimesh) and len(g.faces)]
        clouds = [g for g in geoms if isinstance(g, trimesh.PointCloud)]
        if not meshes and clouds:
            raise _point_cloud_error(path, sum(len(c.vertices) for c in clouds))
        if not meshes:
            raise InputError(f"{path} holds no geometry (no vertices or faces)",
                             "is it really a mesh file? re-export it as OBJ or PLY")
        try:
            loaded = trimesh.load(str(path), force="mesh", process=False)
        except Exception as exc:
            raise InputError(f"cannot read mesh {path}: {exc}", "re-export it as OBJ or PLY") from exc
    if isinstance(loaded, trimesh.PointCloud):
        raise _point_cloud_error(path, len(loaded.vertices))
    if not isinstance(loaded, trimesh.Trimesh):
        raise InputError(f"{path} holds no triangle mesh (got {type(loaded).__name__})", "export the geometry as triangles")
    verts = np.asarray(loaded.vertices, dtype=np.float64)
    faces = np.zeros((0, 3), np.int64) if loaded.faces is None else np.asarray(loaded.faces, np.int64).reshape(-1, 3)
    if len(verts) == 0:
        raise InputError(f"{path} holds no geometry (no vertices or faces)",
                         "is it really a mesh file? re-export it as OBJ or PLY")
    if len(faces) == 0:
        raise _point_cloud_error(path, len(verts))
    return clean_mesh(verts, faces, source=str(path.resolve()), min_face_area=min_face_area)


def clean_mesh(vertices: np.ndarray, faces: np.ndarray, *, source: str = "array", min_face_area: float = 0.0):
    """Weld, drop degenerate/duplicate faces, orient outwards; ``(trimesh.Trimesh, MeshReport)``."""
    trimesh = _trimesh()
    verts = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if not np.isfinite(verts).all():
        raise InputError(f"{source}: the mesh has NaN or infinite vertex coordinates", "fix or re-export the mesh")
    if len(faces) and (faces.min() < 0 or faces.max() >= len(verts)):
        raise InputError(f"{source}: faces refer to vertices that do not exist", "the file is damaged; re-export it")
    n_in_verts = len(verts)
    # weld by position (removes UV / normal seams), then find degenerate faces on the welded indices
    mesh = trimesh.Trimesh(verts, faces, process=False, validate=False)
    mesh.merge_vertices(merge_tex=True, merge_norm=True)
    f = np.asarray(mesh.faces)
    v = np.asarray(mesh.vertices)
    extent = float(np.linalg.norm(v.max(0) - v.min(0))) if len(v) else 0.0
    if extent <= 0:
        raise InputError(f"{source}: all vertices are at one point", "the mesh has no extent; re-export it")
    repeated = (f[:, 0] == f[:, 1]) | (f[:, 1] == f[:, 2]) | (f[:, 0] == f[:, 2])
    area = np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1) / 2
    degenerate = repeated | (area <= max(min_face_area, 1e-14) * extent ** 2)
    n_degenerate = int(degenerate.sum())
    f = f[~degenerate]
    if len(f) == 0:
        raise InputError(f"{source}: all {n_degenerate} faces are degenerate (zero area)",
                         "the mesh has no surface; re-export it (are the vertices collapsed or the faces lines?)")
    key = np.sort(f, axis=1)
    _, first = np.unique(key, axis=0, return_index=True)
    n_dup = len(f) - len(first)
    f = f[np.sort(first)]
    mesh = trimesh.Trimesh(v, f, process=False, validate=False)
    mesh.remove_unreferenced_vertices()
    report = MeshReport(source=source, vertices=len(mesh.vertices), faces=len(mesh.faces),
                        watertight=bool(mesh.is_watertight), dropped_degenerate=n_degenerate, dropped_duplicate=n_dup,
                        merged_vertices=n_in_verts - len(mesh.vertices))
    if report.watertight and mesh.volume < 0:  # inside-out closed mesh
        mesh.invert()
        report.flipped_orientation = True
    return mesh, report


@dataclass(frozen=True)
class UnitCube:
    """``unit = (p - center) * scale + 0.5``: the mesh's bounding box centred in [0, 1]^3."""

    center: tuple[float, float, float]
    scale: float

    @classmethod
    def fit(cls, bounds: np.ndarray, margin: float = DEFAULT_MARGIN) -> "UnitCube":
        lo, hi = np.asarray(bounds[0], np.float64), np.asarray(bounds[1], np.float64)
        extent = float((hi - lo).max())
        if not 0 <= margin < 0.5:
            raise ValueError("margin must be in [0, 0.5)")
        return cls(center=tuple(float(c) for c in (lo + hi) / 2), scale=(1.0 - 2.0 * margin) / extent)

    def to_unit(self, points: np.ndarray) -> np.ndarray:
        return (np.asarray(points, np.float64) - np.asarray(self.center)) * self.scale + 0.5

    def from_unit(self, points: np.ndarray) -> np.ndarray:
        return (np.asarray(points, np.float64) - 0.5) / self.scale + np.asarray(self.center)

    def distance_from_unit(self, d):
        """A distance measured in unit-cube units, in the mesh's original units."""
        return d / self.scale

    def as_dict(self) -> dict[str, Any]:
        return {"center": list(self.center), "scale": self.scale,
                "convention": "unit = (original - center) * scale + 0.5; original = (unit - 0.5) / scale + center"}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UnitCube":
        return cls(center=tuple(float(c) for c in d["center"]), scale=float(d["scale"]))


def normalize_mesh(mesh, margin: float = DEFAULT_MARGIN):
    """A copy of ``mesh`` moved into [0, 1]^3 (longest side ``1 - 2*margin``) and the `UnitCube` used."""
    norm = UnitCube.fit(mesh.bounds, margin)
    unit = mesh.copy()
    unit.vertices = norm.to_unit(mesh.vertices)
    return unit, norm


# ------------------------------------------------------------------------------------------------
# The bundled default shape
# ------------------------------------------------------------------------------------------------

def _smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1 - h) + a * h - k * h * (1 - h)


def default_shape_sdf(p: np.ndarray) -> np.ndarray:
    """The analytic (approximate) SDF behind `default_shape`, for points ``[N, 3]`` around the origin.

    A ring (torus around the y axis) with a ball resting on one side and a tilted stick (capsule)
    rising from the other, blended with a smooth minimum: genus 1, smooth and tight regions, no
    symmetry plane.
    """
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    torus = np.sqrt((np.sqrt(x * x + z * z) - 0.28) ** 2 + y * y) - 0.09
    sphere = np.linalg.norm(p - np.array([0.27, 0.17, 0.02]), axis=1) - 0.16
    a, b = np.array([-0.28, 0.0, 0.0]), np.array([-0.20, 0.40, 0.16])
    ab = b - a
    t = np.clip(((p - a) @ ab) / (ab @ ab), 0.0, 1.0)
    capsule = np.linalg.norm(p - (a + t[:, None] * ab), axis=1) - 0.05
    return _smooth_min(_smooth_min(torus, sphere, 0.05), capsule, 0.04)


def default_shape(resolution: int = 80):
    """The bundled default shape as a closed triangle mesh (deterministic; built once per process)."""
    mesh, report = _default_shape(int(resolution))
    return mesh.copy(), copy.deepcopy(report)


@functools.lru_cache(maxsize=2)
def _default_shape(resolution: int):
    from skimage.measure import marching_cubes

    lo, hi = -0.5, 0.6
    xs = np.linspace(lo, hi, resolution + 1)
    grid = np.stack(np.meshgrid(xs, xs, xs, indexing="ij"), axis=-1).reshape(-1, 3)
    vol = default_shape_sdf(grid).reshape(resolution + 1, resolution + 1, resolution + 1)
    h = (hi - lo) / resolution
    verts, faces, _, _ = marching_cubes(vol, 0.0, spacing=(h, h, h), gradient_direction="descent", allow_degenerate=False)
    mesh, report = clean_mesh(verts + lo, faces, source=DEFAULT_SHAPE)
    return mesh, report
