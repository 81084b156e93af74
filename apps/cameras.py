"""``fieldstudio cameras DATA --out cams.png``: see the cameras of a scene before training on it.

Draws every camera's frustum (coloured by split; a small triangle marks each image's top edge, so
flipped conventions show) and the box the field lives in, in the normalised scene space, from two
viewpoints, and prints a summary with warnings for poses that look wrong (cameras that look past the
box, cameras inside it, duplicated positions).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

SPLIT_COLOURS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}


def _frustum(cams, i: int, size: float) -> tuple[np.ndarray, np.ndarray]:
    """Apex and the 4 image corners (+ the top-edge marker tip) in world space, scaled to depth ``size``."""
    w, h = float(cams.width[i]), float(cams.height[i])
    fx, fy, cx, cy = (float(v[i]) for v in (cams.fx, cams.fy, cams.cx, cams.cy))
    pts = []
    for u, v in ((0, 0), (w, 0), (w, h), (0, h), (w / 2, -0.25 * h)):
        pts.append([(u - cx) / fx, -(v - cy) / fy, -1.0])
    pts = np.array(pts) * size / max(1.0, np.abs(np.array(pts)[:4, :2]).max())
    c2w = cams.c2w[i].double().cpu().numpy()
    return c2w[:, 3], pts @ c2w[:, :3].T + c2w[:, 3]


def _box_edges(aabb: np.ndarray):
    lo, hi = aabb
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    for a in range(8):
        for b in range(a + 1, 8):
            if np.sum(corners[a] != corners[b]) == 1:
                yield corners[a], corners[b]


def check_poses(dataset) -> list[str]:
    """Human-readable warnings about poses that are probably wrong."""
    import torch

    from fieldstudio.renderers.rays import camera_rays, ray_aabb_intersect

    cams, warn = dataset.cameras, []
    n = len(cams)
    names = dataset.names or [f"frame {i}" for i in range(n)]
    if dataset.contraction == "none":
        w, h = cams.width.float(), cams.height.float()
        o, d = camera_rays(cams, torch.arange(n), w / 2 - 0.5, h / 2 - 0.5)
        _, _, hit = ray_aabb_intersect(o, d, dataset.aabb)
        miss = (~hit).nonzero().reshape(-1).tolist()
        if miss:
            warn.append(f"{len(miss)} of {n} cameras look past the scene box (e.g. {', '.join(names[i] for i in miss[:3])})"
                        " -- wrong pose convention or scale?")
        lo, hi = dataset.aabb[0], dataset.aabb[1]
        inside = ((cams.centers > lo) & (cams.centers < hi)).all(-1).nonzero().reshape(-1).tolist()
        if inside and len(inside) < n:
            warn.append(f"{len(inside)} cameras sit inside the scene box (e.g. {', '.join(names[i] for i in inside[:3])})")
        elif inside:
            warn.append("all cameras sit inside the scene box (an inward room capture?); the box may be too small")
    c = cams.centers.double()
    dd = torch.cdist(c, c) + torch.eye(n, dtype=c.dtype) * 1e9
    if n > 1:
        scale = float((c - c.mean(0)).norm(dim=-1).max().clamp(min=1e-9))
        dup = (dd.min(1).values < 1e-6 * scale).nonzero().reshape(-1).tolist()
        if dup:
            warn.append(f"{len(dup)} cameras share a position with another (e.g. {', '.join(names[i] for i in dup[:3])})")
    return warn


def format_summary(s: dict[str, Any]) -> str:
    lines = [f"{s['format']} scene: {s['source']}",
             f"  views      {s['views']} ({', '.join(f'{k} {v}' for k, v in s['splits'].items())}), "
             f"{s['width']}x{s['height']} px{', RGBA' if s['alpha'] else ''}{', masks' if s['masks'] else ''}",
             f"  cameras    {', '.join(s['models'])}; fx {s['fx'][0]:.1f}-{s['fx'][1]:.1f} px, "
             f"fy {s['fy'][0]:.1f}-{s['fy'][1]:.1f} px",
             f"  scene box  {np.round(s['aabb'], 3).tolist()}, near {s['near']:.3g}, far {s['far']:.3g}",
             f"  normalised scene = {s['normalization']['scale']:.4g} * R @ world + "
             f"{np.round(s['normalization']['offset'], 4).tolist()}" + ("" if np.allclose(
                 s['normalization']['rotation'], np.eye(3)) else " (R: re-centring rotation)"),
             f"  cameras at distance {s['camera_distance'][0]:.3g}-{s['camera_distance'][1]:.3g} from the "
             + ("average camera" if s["contraction"] == "ndc" else "box centre")]
    if s["contraction"] == "ndc":
        lines.append("  forward-facing: the field lives in NDC of the average camera (contraction = ndc)")
    for w in s.get("warnings", []):
        lines.append(f"  warning: {w}")
    return "\n".join(lines)


def plot_cameras(dataset, out: str | Path) -> Path:
    import matplotlib
    import torch

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from mpl_toolkits.mplot3d.art3d import Line3DCollection

    from fieldstudio.runs import atomic_write_bytes

    cams = dataset.cameras.to("cpu")
    centres = cams.centers.double().numpy()
    aabb = dataset.aabb.double().cpu().numpy()
    ndc = dataset.contraction == "ndc"
    pts = centres if ndc else np.concatenate([centres, aabb])
    extent = float((pts.max(0) - pts.min(0)).max()) or 1.0
    size = 0.06 * extent
    fig = plt.figure(figsize=(12, 6), dpi=100)
    views = [(22, -60, "perspective"), (89, -90, "from above (+z)")]
    split_of = ["train"] * len(cams)
    for name in ("val", "test", "train"):
        for i in dataset.splits.get(name, torch.zeros(0, dtype=torch.long)).tolist():
            split_of[i] = name
    for k, (elev, azim, title) in enumerate(views):
        ax = fig.add_subplot(1, 2, k + 1, projection="3d")
        if not ndc:
            for a, b in _box_edges(aabb):
                ax.plot(*zip(a, b), color="k", lw=1.2)
            if not np.allclose(aabb, [[0, 0, 0], [1, 1, 1]]):
                for a, b in _box_edges(np.array([[0.0] * 3, [1.0] * 3])):
                    ax.plot(*zip(a, b), color="0.5", lw=0.8, ls="--")
        segments: dict[str, list] = {}
        for i in range(len(cams)):
            apex, p = _frustum(cams, i, size)
            seg = segments.setdefault(SPLIT_COLOURS.get(split_of[i], "tab:gray"), [])
            for j in range(4):
                seg += [(apex, p[j]), (p[j], p[(j + 1) % 4])]
            seg += [(p[0], p[4]), (p[4], p[1])]
        for col, seg in segments.items():
            ax.add_collection3d(Line3DCollection(seg, colors=col, linewidths=0.6))
        for name, col in SPLIT_COLOURS.items():
            ax.plot([], [], color=col, label=f"{name} ({len(dataset.splits.get(name, []))})")
        lo, hi = pts.min(0), pts.max(0)
        mid, half = (lo + hi) / 2, (hi - lo).max() / 2 * 1.1 + size
        ax.set_xlim(mid[0] - half, mid[0] + half)
        ax.set_ylim(mid[1] - half, mid[1] + half)
        ax.set_zlim(mid[2] - half, mid[2] + half)
        ax.set_box_aspect((1, 1, 1))
        ax.view_init(elev=elev, azim=azim)
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        ax.set_zlabel("z")
        ax.set_title(title, fontsize=10)
        if k == 1:
            ax.set_zticks([])
            ax.set_zlabel("")
        if k == 0:
            ax.legend(loc="upper left", fontsize=8)
    what = "NDC scene (forward-facing; box not drawn)" if ndc else "black: scene box"
    fig.suptitle(f"{dataset.format}: {Path(dataset.source).name} -- {len(cams)} cameras, "
                 f"{dataset.width}x{dataset.height} px, normalised scene space ({what})", fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    out = Path(out)
    atomic_write_bytes(out, buf.getvalue())
    return out


def camera_preview(data: str | Path | None = None, out: str | Path | None = "cams.png", format: str = "auto",
                   downscale: int = 1) -> dict[str, Any]:
    """Load a scene (the default scene with no ``data``), plot its cameras to ``out`` and return a summary."""
    import torch

    from fieldstudio.datasets.scene import load_scene

    ds = load_scene(data, format=format, downscale=downscale)
    s = ds.summary()
    centre = ds.aabb.mean(0) if ds.contraction == "none" else torch.zeros(3)
    dist = (ds.cameras.centers - centre).norm(dim=-1)
    s["camera_distance"] = [float(dist.min()), float(dist.max())]
    s["warnings"] = check_poses(ds)
    if out is not None:
        s["plot"] = str(plot_cameras(ds, out))
    return s


def _cmd_cameras(args) -> int:
    import json

    s = camera_preview(args.data, out=args.out, format=args.format, downscale=args.downscale)
    print(json.dumps(s, indent=2, default=str) if args.json else format_summary(s) + f"\nwrote {s['plot']}")
    return 0


def add_parser(sub) -> None:
    """Register ``fieldstudio cameras`` on the CLI's subparsers."""
    p = sub.add_parser("cameras", help="picture of a scene's cameras and box, to check poses before training",
                       description="Load posed photos (Blender, instant-ngp/nerfstudio transforms.json, LLFF, COLMAP), "
                                   "draw the camera frusta and the scene box, and print a summary with pose warnings.")
    p.add_argument("data", nargs="?", default=None,
                   help="scene folder or pose file; default: the procedural default scene")
    p.add_argument("--out", default="cams.png", help="PNG to write (default cams.png)")
    p.add_argument("--format", default="auto", choices=("auto", "blender", "ngp", "llff", "colmap"))
    p.add_argument("--downscale", type=int, default=1, help="read images N x smaller (1, 2, 4, 8)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cmd_cameras)
