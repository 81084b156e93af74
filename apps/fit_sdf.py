"""Fit a neural signed distance field to a mesh: ``fit_sdf()`` is what ``fieldstudio fit sdf`` runs.

The mesh is normalised into the unit cube (the similarity is stored, so exports go back to the
original units), a pool of training points is drawn on, near and around the surface with their
ground-truth signed distances (`fieldstudio.datasets.sdf_samples`), and the shared training loop
fits the field with MAPE or L1 (plus optional SIREN-style eikonal and normal terms). The run
folder then holds, besides config/weights/metrics/history/log:

* ``mesh.ply``: marching cubes of the field at ``resolution``^3, in the mesh's original units,
* ``target.ply``: the normalised ground-truth mesh (unit cube), which the metrics and previews use,
* ``preview.png``: the fitted SDF sphere-traced next to the ground truth, from the default camera.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fieldstudio import __version__, runs
from fieldstudio.datasets.meshes import DEFAULT_MARGIN, DEFAULT_SHAPE, UnitCube, default_shape, load_mesh, normalize_mesh
from fieldstudio.datasets.sdf_samples import DEFAULT_MIX, MeshSDF, sample_sdf_points
from fieldstudio.device import pick_device
from fieldstudio.errors import ConfigError, InputError
from fieldstudio.fields.sdf import (PRESET_LOSS, PRESET_LR, SDF_LOSSES, SDF_PRESETS, SDFField, eikonal_loss,
                                    l1_loss, mape_loss, normal_loss, sdf_field_preset)
from fieldstudio.renderers.mesh_metrics import DEFAULT_TAUS, compare_meshes, grid_cell_centers, occupancy_iou
from fieldstudio.renderers.surfaces import (default_camera, extract_mesh, render_ray_hits, render_sdf, sample_volume,
                                            side_by_side)

from .config_files import read_encoder_file
from .training import TrainState, encoder_param_groups, load_checkpoint, make_adam, train

TARGET_MESH = "target.ply"
MESH_OUT = "mesh.ply"
PREVIEW = "preview.png"
#: encoders that later releases add; named in the error so users know they are coming
_LATER: tuple[str, ...] = ()


def initialize_kernels(fld: SDFField, pool, seed: int = 0) -> dict[str, Any] | None:
    """Place an adaptive encoder's kernels where the samples are close to the surface.

    Weights are 1 / (|sdf| + 1e-4) (NeuRBF's choice); kernels stay where they are on resume.
    Returns the placement's timings, or None for encoders without kernels.
    """
    enc = fld.encoding
    if not hasattr(enc, "initialize"):
        return None
    from fieldstudio.encoders.rbf_init import surface_weights

    x = torch.from_numpy(pool.points).double()
    if fld.cfg["input_range"] == "signed":
        x = x * 2 - 1
    extent = enc.cfg["bounds"][1] - enc.cfg["bounds"][0]
    info = enc.initialize(x, surface_weights(pool.sdf), min_width=extent / 1024 / 200, max_width=extent / 10,
                          seed=seed)
    info["n_kernels"] = enc.n_kernels
    return info


def resolve_sdf_field_config(encoder: str, second_order: bool = False) -> tuple[dict[str, Any], float]:
    """``encoder`` is a preset name or a JSON file; returns (field config, default learning rate).

    A JSON file may hold a whole field config (``{"encoding": ..., "network": ..., "learning_rate"}``)
    or just a tcnn encoding config, which then gets the hash-grid preset's 2 x 64 MLP.
    """
    if encoder in SDF_PRESETS:
        return sdf_field_preset(encoder, second_order=second_order), PRESET_LR[encoder]
    if encoder.lower() in _LATER:
        raise ConfigError(f"--encoder {encoder} is not available for SDFs yet",
                          f"use one of {', '.join(SDF_PRESETS)} or a path to a JSON config")
    cfg = read_encoder_file(encoder, SDF_PRESETS, example='{"otype": "HashGrid"}')
    preset = sdf_field_preset("hashgrid", second_order=second_order)
    if "encoding" in cfg:
        lr = float(cfg.pop("learning_rate", 1e-2))
        field_cfg = dict(cfg)
        field_cfg.setdefault("network", preset["network"])
    else:
        lr = 1e-2
        field_cfg = dict(preset)
        field_cfg["encoding"] = cfg
    return field_cfg, lr


def load_target(mesh: str | Path | None, margin: float = DEFAULT_MARGIN):
    """``(unit-cube mesh, UnitCube, report dict)`` for a path, or the default shape for None."""
    if mesh is None or str(mesh) == DEFAULT_SHAPE:
        original, report = default_shape()
    else:
        original, report = load_mesh(mesh)
    unit, norm = normalize_mesh(original, margin)
    return unit, norm, report.as_dict()


def _save_png(path: Path, img: np.ndarray) -> None:
    import io

    from PIL import Image

    arr = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    runs.atomic_write_bytes(path, buf.getvalue())


def _label(img: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    im = Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8))
    ImageDraw.Draw(im).text((8, 6), text, fill=(40, 40, 40))
    return np.asarray(im, dtype=np.float64) / 255


def _save_mesh(path: Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    import trimesh

    suffix = path.suffix.lower().lstrip(".")
    if suffix not in ("ply", "obj", "glb", "stl", "off"):
        raise InputError(f"cannot write a mesh as '.{suffix}'", "use .ply, .obj or .glb")
    data = trimesh.Trimesh(vertices, faces, process=False).export(file_type=suffix)
    runs.atomic_write_bytes(path, data if isinstance(data, bytes) else data.encode())


def _make_adam(fld: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """`make_adam`'s settings, with PyTorch's fused kernel where it exists: on the CPU a step over
    the 11M parameters of the hash grid preset takes ~16 ms fused instead of ~110-250 ms."""
    params = [p for p in fld.parameters() if p.requires_grad]
    try:
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.99), eps=1e-15, fused=True)
    except (RuntimeError, TypeError, ValueError):  # older PyTorch or an unsupported device
        return make_adam(fld, lr)


def sdf_closure(fld: SDFField):
    """``points -> sdf`` for the renderers (no gradients)."""
    def fn(p: torch.Tensor) -> torch.Tensor:
        return fld.sdf(p)
    return fn


def render_preview(fld: SDFField, target_mesh=None, *, size: int = 384, device=None,
                   target_sdf: MeshSDF | None = None) -> np.ndarray:
    """The fitted field sphere-traced (left) next to the ground-truth mesh ray-cast (right)."""
    cam = default_camera()
    fld.eval()
    fitted, _ = render_sdf(sdf_closure(fld), camera=cam, width=size, device=device)
    panels = [_label(fitted, "fitted SDF (sphere traced)")]
    if target_mesh is not None:
        oracle = target_sdf or MeshSDF(target_mesh)
        truth = render_ray_hits(oracle.cast_rays, camera=cam, width=size)
        panels.append(_label(truth, "ground truth mesh"))
    return side_by_side(panels)


def evaluate_sdf(fld: SDFField, target_mesh, target_sdf: MeshSDF, *, resolution: int = 256, narrow_band: bool = True,
                 iou_resolution: int = 128, n_samples: int = 200_000, device=None, seed: int = 0):
    """Extract the field's mesh and score it against the target; ``(unit-cube trimesh, metrics dict)``."""
    fld.eval()
    fn = sdf_closure(fld)
    surf = extract_mesh(fn, resolution, narrow_band=narrow_band, device=device)
    pred = surf.to_trimesh()

    t0 = time.perf_counter()
    # occupancy of the field at the centres of an iou_resolution^3 grid (narrow band: exact sign
    # near the surface, the coarse pass's sign elsewhere), against the ground truth's sign
    r = iou_resolution
    half = 0.5 / r
    vol, _ = sample_volume(fn, r, bounds=((half,) * 3, (1 - half,) * 3), narrow_band=narrow_band, device=device)
    iou = occupancy_iou(vol.reshape(-1) < 0, target_sdf.inside(grid_cell_centers(r)))
    geo = compare_meshes(pred, target_mesh, n_samples=n_samples, seed=seed, truth_sdf=target_sdf,
                         pred_sdf=MeshSDF(pred) if len(pred.faces) else None)
    metrics = {"iou": round(iou, 6), **{k: (round(v, 8) if isinstance(v, float) else v) for k, v in geo.items()},
               "metric_seconds": round(time.perf_counter() - t0, 3),
               "extraction": {"resolution": resolution, "vertices": int(len(pred.vertices)), "faces": int(len(pred.faces)),
                              **{k: v for k, v in surf.stats.items() if k != "resolution"}}}
    return pred, metrics


def fit_sdf(mesh: str | Path | None = None, *, encoder: str = "hashgrid", steps: int = 1000,
            out: str | Path = "runs/sdf", loss: str | None = None, eikonal: float = 0.0, normal_weight: float = 0.0,
            batch_size: int = 1 << 14, lr: float | None = None, n_samples: int = 1 << 19, resolution: int = 256,
            narrow_band: bool = True, iou_resolution: int = 128, metric_samples: int = 200_000,
            preview_size: int = 320, device: str = "auto", seed: int = 0, resume: bool = False,
            checkpoint_every: int = 250, progress: bool = True, backend: str = "auto",
            lr_decay: float = 0.1, callback=None) -> dict[str, Any]:
    """Fit ``mesh`` (a path, or None for the bundled default shape) and write a run folder.

    ``loss`` defaults to the preset's (`PRESET_LOSS`: MAPE, instant-ngp's, for grids; L1 for
    SIREN). ``resume=True`` continues the run in ``out`` (mesh, field and settings from its
    config.json; ``steps`` is the new total). The learning rate decays exponentially to
    ``lr_decay`` times its start over the run. Returns the metrics written to metrics.json.
    """
    out = Path(out)
    dev = pick_device(device)
    t_start = time.perf_counter()
    if resume:
        old = runs.read_json(out / runs.CONFIG, "run config")
        if old.get("kind") != "sdf":
            raise InputError(f"{out} holds a '{old.get('kind')}' run, not an SDF run", "choose another --out")
        data, tr = old["data"], old["train"]
        mesh = data["source"]
        field_cfg = old["field"]
        encoder, lr, batch_size, seed, loss = tr["encoder"], tr["lr"], tr["batch_size"], tr["seed"], tr["loss"]
        eikonal, normal_weight, n_samples, lr_decay = tr["eikonal"], tr["normal_weight"], tr["n_samples"], tr["lr_decay"]
        margin = data["normalization"]["margin"]
    else:
        if steps < 1:
            raise ConfigError(f"--steps must be at least 1, got {steps}", "e.g. --steps 1000")
        loss = PRESET_LOSS.get(encoder, "mape") if loss is None else loss
        if loss not in SDF_LOSSES:
            raise ConfigError(f"unknown loss '{loss}'", f"use one of {', '.join(SDF_LOSSES)}")
        if eikonal < 0 or normal_weight < 0:
            raise ConfigError("loss weights must be >= 0", "e.g. --eikonal 0.1 --normal-weight 0.1")
        if n_samples < 1000:
            raise ConfigError(f"--samples must be at least 1000, got {n_samples}", "e.g. --samples 500000")
        margin = DEFAULT_MARGIN
        field_cfg, default_lr = resolve_sdf_field_config(encoder, second_order=eikonal > 0 or normal_weight > 0)
        lr = default_lr if lr is None else lr
        if (out / runs.CONFIG).exists() and (out / runs.STATE).exists():
            raise InputError(f"{out} already holds a run", "pass --resume to continue it, or choose another --out")

    log_lines: list[str] = []
    target, norm, report = load_target(mesh, margin)
    oracle = MeshSDF(target)
    t0 = time.perf_counter()
    pool = sample_sdf_points(target, oracle, n_samples, np.random.default_rng(seed))
    sample_seconds = time.perf_counter() - t0
    log_lines.append(f"target: {report['source']} ({report['faces']} faces, watertight={report['watertight']}); "
                     f"{len(pool)} training points with ground truth in {sample_seconds:.1f} s; sign: {oracle.sign_method}")

    torch.manual_seed(seed)
    fld = SDFField(field_cfg, backend=backend)
    init_info = None if resume else initialize_kernels(fld, pool, seed)
    if init_info:
        log_lines.append(f"kernels placed near the surface: {init_info}")
    fld = fld.to(dev)
    second_order = eikonal > 0 or normal_weight > 0
    enc_cfg = fld.encoding.config
    if second_order and enc_cfg.get("interpolation") == "Linear":
        log_lines.append("note: eikonal/normal losses with Linear grid interpolation: second derivatives in x are zero; "
                         "use \"interpolation\": \"Smoothstep\"")
    groups = encoder_param_groups(fld, lr)
    opt = make_adam(fld, lr, param_groups=groups) if groups else _make_adam(fld, lr)
    config = {
        "format_version": runs.FORMAT_VERSION, "fieldstudio": __version__, "kind": "sdf",
        "field": fld.config,
        "data": {"source": report["source"], "mesh": report,
                 "normalization": {**norm.as_dict(), "margin": margin},
                 "ground_truth": oracle.describe(),
                 "samples": {"n": len(pool), "counts": pool.counts,
                             "mix": {"surface": DEFAULT_MIX["surface"],
                                     "near_sigmas": {str(k): v for k, v in DEFAULT_MIX["near"].items()},
                                     "uniform": DEFAULT_MIX["uniform"]}}},
        "train": {"encoder": encoder, "loss": loss, "eikonal": eikonal, "normal_weight": normal_weight, "lr": lr,
                  "lr_decay": lr_decay, "batch_size": batch_size, "n_samples": n_samples, "seed": seed, "steps": steps,
                  "optimizer": {"otype": "Adam", "beta1": 0.9, "beta2": 0.99, "epsilon": 1e-15}},
        "extraction": {"resolution": resolution, "narrow_band": narrow_band},
    }
    out.mkdir(parents=True, exist_ok=True)
    state = load_checkpoint(out, fld, opt) if resume else TrainState()
    if not resume:
        runs.atomic_write_json(out / runs.CONFIG, config)
        _save_mesh(out / TARGET_MESH, target.vertices, target.faces)

    pts = torch.from_numpy(pool.points).to(dev)
    sdf = torch.from_numpy(pool.sdf).to(dev)
    nrm = torch.from_numpy(pool.normals).to(dev)
    surf = torch.from_numpy(pool.on_surface).to(dev)
    n_pool = len(pool)
    data_loss = mape_loss if loss == "mape" else l1_loss
    bs = min(batch_size, n_pool)

    def step_fn(step: int):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(0, n_pool, (bs,), generator=gen).to(dev)
        x, y = pts[idx], sdf[idx]
        if second_order:
            f, g = fld.sdf_and_gradient(x, create_graph=True)
        else:
            f, g = fld.sdf(x), None
        total = data_loss(f, y)
        if eikonal > 0:
            total = total + eikonal * eikonal_loss(g)
        if normal_weight > 0:
            on = surf[idx]
            if bool(on.any()):
                total = total + normal_weight * normal_loss(g[on], nrm[idx][on])
        return total, None

    def schedule(step: int) -> float:
        return lr_decay ** (step / max(steps, 1))

    label = encoder if len(str(encoder)) < 20 else "custom"
    state = train(fld, step_fn, opt, steps=steps, run_dir=out, config=config, state=state,
                  checkpoint_every=checkpoint_every, progress=progress, desc=f"fit sdf [{label}]",
                  scheduler=schedule, log=log_lines.append, callback=callback)

    pred, quality = evaluate_sdf(fld, target, oracle, resolution=resolution, narrow_band=narrow_band,
                                 iou_resolution=iou_resolution, n_samples=metric_samples, device=dev, seed=seed)
    if len(pred.faces):
        _save_mesh(out / MESH_OUT, norm.from_unit(pred.vertices), np.asarray(pred.faces))
    else:
        log_lines.append("warning: the field has no zero crossing in the unit cube; no mesh written")
    t_prev = time.perf_counter()
    _save_png(out / PREVIEW, render_preview(fld, target, size=preview_size, device=dev, target_sdf=oracle))
    preview_seconds = time.perf_counter() - t_prev
    n_params = sum(p.numel() for p in fld.parameters())
    metrics = {
        **{k: quality[k] for k in ("iou", "chamfer_l1", "accuracy", "completeness", "normal_consistency")},
        **{k: v for k, v in quality.items() if k.startswith(("f_score", "precision", "recall"))},
        "chamfer_l1_original_units": quality["chamfer_l1"] / norm.scale if np.isfinite(quality["chamfer_l1"]) else None,
        "params": n_params, "steps": state.step, "seconds": round(state.seconds, 3),
        "seconds_sampling": round(sample_seconds, 3), "seconds_metrics": quality["metric_seconds"],
        "seconds_preview": round(preview_seconds, 3), "seconds_total": round(time.perf_counter() - t_start, 3),
        "extraction": quality["extraction"], "encoder": encoder, "loss": loss, "eikonal": eikonal,
        "normal_weight": normal_weight, "batch_size": bs, "device": str(dev), "mesh": report,
        **({"kernel_init": init_info} if init_info else {}),
        "ground_truth": oracle.describe(), "final_loss": state.history[-1]["loss"] if state.history else None,
        "protocol": {
            "units": "unit cube (the mesh scaled so its longest side is 1 - 2*margin)",
            "iou": f"occupancy at the centres of a {iou_resolution}^3 grid over [0,1]^3; fitted: sdf < 0 "
                   "(evaluated in a narrow band around its zero level, elsewhere the sign of a 1/4-resolution "
                   f"pass); truth: {oracle.sign_method}",
            "chamfer_l1": f"(accuracy + completeness) / 2 over {quality['n_samples']} area-uniform samples per surface, "
                          "exact point-to-triangle distances to the other surface; mesh from marching cubes at "
                          f"{resolution}^3",
            "normal_consistency": "mean |n . n_closest| over the same samples, both directions averaged",
            "f_score": f"at tau in {list(DEFAULT_TAUS)} (unit-cube units): 2PR/(P+R), P = share of fitted samples "
                       "within tau of the truth, R = share of true samples within tau of the fit",
        },
    }
    runs.atomic_write_json(out / runs.METRICS, metrics)
    log_lines.append(f"final: IoU {metrics['iou']:.4f}, Chamfer-L1 {metrics['chamfer_l1']:.3g}, "
                     f"NC {metrics['normal_consistency']:.4f}, F@0.005 {metrics['f_score@0.005']:.4f}, {n_params} params")
    with open(out / runs.LOG, "a") as f:
        f.write("\n".join(log_lines) + "\n")
    return metrics


# ------------------------------------------------------------------------------------------------
# Working with finished runs
# ------------------------------------------------------------------------------------------------

def _open_sdf_run(run_dir: str | Path, device: str):
    dev = pick_device(device)
    run = runs.load_run(run_dir, device=dev)
    if run.kind != "sdf":
        raise InputError(f"{run_dir} holds a '{run.kind}' run, not an SDF run",
                         "pass the --out folder of `fieldstudio fit sdf`")
    return run, dev


def render_run(run_dir: str | Path, out: str | Path | None = None, *, size: int = 512, truth: bool = True,
               device: str = "auto") -> Path:
    """``fieldstudio render-sdf``: a sphere-traced PNG of the run's field (and its ground truth beside it)."""
    run, dev = _open_sdf_run(run_dir, device)
    target = None
    if truth and (run.path / TARGET_MESH).exists():
        import trimesh

        target = trimesh.load(str(run.path / TARGET_MESH), force="mesh", process=False)
    img = render_preview(run.field, target, size=size, device=dev)
    out = Path(out) if out else run.path / "render.png"
    _save_png(out, img)
    return out


def export_run_mesh(run_dir: str | Path, out: str | Path, *, resolution: int = 256, units: str = "original",
                    narrow_band: bool = True, device: str = "auto") -> dict[str, Any]:
    """``fieldstudio export-mesh``: marching cubes of the run's field written as PLY / OBJ / GLB."""
    if units not in ("original", "unit"):
        raise ConfigError(f"unknown units '{units}'", "use original or unit")
    out = Path(out)
    if out.suffix.lower() not in (".ply", ".obj", ".glb"):
        raise InputError(f"cannot write a mesh as '{out.suffix or '(no extension)'}'", "use .ply, .obj or .glb")
    run, dev = _open_sdf_run(run_dir, device)
    run.field.eval()
    surf = extract_mesh(sdf_closure(run.field), resolution, narrow_band=narrow_band, device=dev)
    if len(surf.faces) == 0:
        raise InputError(f"the field in {run_dir} has no zero crossing in the unit cube",
                         "train it longer or check the run")
    verts = surf.vertices
    if units == "original":
        verts = UnitCube.from_dict(run.config["data"]["normalization"]).from_unit(verts)
    _save_mesh(out, verts, surf.faces)
    return {"path": str(out), "vertices": int(len(verts)), "faces": int(len(surf.faces)), **surf.stats}
