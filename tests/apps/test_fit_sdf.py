"""End-to-end SDF fitting, run folders, render/export commands, and the CLI's handling of bad input."""

import json
import warnings

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

import fieldstudio
from fieldstudio.apps.cli import main
from fieldstudio.apps.fit_sdf import fit_sdf
from fieldstudio.datasets import sdf_samples
from fieldstudio.datasets.meshes import default_shape
from fieldstudio.fields.sdf import SDFField

# The stated quality bar of the CI-short fit: the bundled default shape, a small hash grid (8 levels,
# 2^15 table) given as a tcnn JSON config, 150 steps of 4096 points (~6 s of training here), 96^3
# extraction. It reaches IoU 0.989 / Chamfer-L1 4.2e-4 (unit cube) on this machine.
SMALL_GRID = {"otype": "HashGrid", "n_levels": 8, "n_features_per_level": 2, "log2_hashmap_size": 15,
              "base_resolution": 8, "per_level_scale": 1.5}
CI_STEPS, CI_IOU, CI_CHAMFER = 150, 0.97, 1e-3
TINY = dict(n_samples=5000, batch_size=1024, resolution=32, iou_resolution=32, metric_samples=2000, preview_size=32,
            progress=False, device="cpu")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdf")
    enc = root / "grid.json"
    enc.write_text(json.dumps(SMALL_GRID))
    metrics = fit_sdf(None, encoder=str(enc), steps=CI_STEPS, out=root / "run", n_samples=50_000, batch_size=4096,
                      resolution=96, iou_resolution=64, metric_samples=10_000, preview_size=48, progress=False,
                      device="cpu")
    return root / "run", metrics


def test_default_shape_fit_reaches_the_stated_quality(fitted):
    run_dir, m = fitted
    assert m["iou"] >= CI_IOU and m["chamfer_l1"] <= CI_CHAMFER, m
    assert m["f_score@0.005"] > 0.95 and m["normal_consistency"] > 0.95
    assert m["steps"] == CI_STEPS and m["params"] > 0 and m["seconds"] > 0 and m["loss"] == "mape"
    for name in ("config.json", "weights.safetensors", "metrics.json", "history.json", "log.txt", "mesh.ply",
                 "target.ply", "preview.png"):
        assert (run_dir / name).exists(), name
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["iou"] == m["iou"] and "protocol" in saved
    log = (run_dir / "log.txt").read_text()
    assert "ray-parity voting" in log and "final: IoU" in log
    preview = np.asarray(Image.open(run_dir / "preview.png"))
    assert preview.shape[0] == 48 and preview.shape[1] > 96  # fitted | ground truth


def test_exported_mesh_is_in_the_original_units(fitted):
    run_dir, _ = fitted
    mesh = trimesh.load(str(run_dir / "mesh.ply"), process=False)
    original, _ = default_shape()
    np.testing.assert_allclose(mesh.bounds, original.bounds, atol=0.01)
    cfg = json.loads((run_dir / "config.json").read_text())
    norm = cfg["data"]["normalization"]
    assert norm["margin"] == 0.05 and len(norm["center"]) == 3


def test_load_run_rebuilds_the_field(fitted):
    run_dir, _ = fitted
    run = fieldstudio.load_run(run_dir)
    assert run.kind == "sdf" and isinstance(run.field, SDFField)
    x = torch.rand(500, 3)
    again = fieldstudio.load_run(run_dir)
    torch.testing.assert_close(run.field(x), again.field(x), rtol=0, atol=0)
    # the field's sign agrees with the ground truth away from the surface
    target = trimesh.load(str(run_dir / "target.ply"), process=False)
    oracle = sdf_samples.MeshSDF(target)
    pts = np.random.default_rng(0).random((2000, 3))
    gt = oracle.signed_distance(pts)
    far = np.abs(gt) > 0.02
    with torch.no_grad():
        pred = run.field.sdf(torch.from_numpy(pts).float()).numpy()
    assert np.mean(np.sign(pred[far]) == np.sign(gt[far])) > 0.99


def _cli(args, capsys):
    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_render_and_export_commands(fitted, tmp_path, capsys):
    run_dir, _ = fitted
    code, out, _ = _cli(["render-sdf", run_dir, "--out", tmp_path / "r.png", "--size", "48", "--device", "cpu"], capsys)
    assert code == 0 and "wrote" in out
    img = np.asarray(Image.open(tmp_path / "r.png"))
    assert img.shape[0] == 48 and img.shape[1] == 2 * 48 + 8
    code, out, _ = _cli(["export-mesh", run_dir, "--resolution", "48", "--out", tmp_path / "m.obj", "--units", "unit"],
                        capsys)
    assert code == 0 and "faces" in out
    mesh = trimesh.load(str(tmp_path / "m.obj"), process=False)
    assert mesh.bounds.min() > 0 and mesh.bounds.max() < 1  # unit-cube coordinates
    code, _, err = _cli(["export-mesh", run_dir, "--out", tmp_path / "m.xyz"], capsys)
    assert code == 2 and "cannot write a mesh" in err


def _small_grid_file(tmp_path, **extra):
    path = tmp_path / "grid.json"
    path.write_text(json.dumps({**SMALL_GRID, **extra}))
    return str(path)


def test_resume_continues_to_the_new_total(tmp_path):
    fit_sdf(None, encoder=_small_grid_file(tmp_path), steps=4, out=tmp_path / "r", checkpoint_every=2, **TINY)
    m = fit_sdf(None, steps=6, out=tmp_path / "r", resume=True, checkpoint_every=2, **TINY)
    assert m["steps"] == 6
    hist = json.loads((tmp_path / "r" / "history.json").read_text())
    assert hist[-1]["step"] == 6
    with pytest.raises(fieldstudio.InputError, match="--resume"):
        fit_sdf(None, steps=2, out=tmp_path / "r", **TINY)


@pytest.mark.parametrize("encoder,extra", [
    ("siren", dict(eikonal=0.05, normal_weight=0.05)),  # second-order losses through SIREN
    ("smoothstep-grid", dict(eikonal=0.1, normal_weight=0.1)),  # ... and through the Smoothstep grid
    ("frequency", dict(loss="l1")),
])
def test_presets_and_second_order_losses_run(tmp_path, encoder, extra):
    enc = _small_grid_file(tmp_path, interpolation="Smoothstep") if encoder == "smoothstep-grid" else encoder
    m = fit_sdf(None, encoder=enc, steps=3, out=tmp_path / "r", **extra, **TINY)
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert m["steps"] == 3 and np.isfinite(m["final_loss"])
    if encoder == "smoothstep-grid":
        assert cfg["field"]["encoding"]["interpolation"] == "Smoothstep" and cfg["train"]["eikonal"] == 0.1
    if encoder == "siren":
        assert cfg["train"]["loss"] == "l1" and cfg["field"]["input_range"] == "signed"


def test_without_open3d_the_fallback_runs_with_one_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(sdf_samples, "open3d_available", lambda: False)
    monkeypatch.setattr(sdf_samples, "_WARNED", set())
    sphere = trimesh.creation.icosphere(3, radius=2.0)
    sphere.export(str(tmp_path / "sphere.obj"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = fit_sdf(tmp_path / "sphere.obj", encoder=_small_grid_file(tmp_path), steps=2, out=tmp_path / "r", **TINY)
    msgs = [str(w.message) for w in caught if "open3d is not available" in str(w.message)]
    assert len(msgs) == 1
    assert m["ground_truth"]["backend"] == "scipy" and "pseudo-normal" in m["ground_truth"]["sign"]


# --- bad input through the CLI: exit status 2, one line, no traceback ---------------------------------

def _bad_files(tmp_path):
    (tmp_path / "garbage.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\n" + bytes(range(256)))
    (tmp_path / "empty.obj").write_text("# no geometry\n")
    trimesh.PointCloud(np.random.default_rng(0).random((30, 3))).export(str(tmp_path / "cloud.ply"))
    (tmp_path / "flat.obj").write_text("v 0 0 0\nv 1 0 0\nv 2 0 0\nv 3 0 0\nf 1 2 3\nf 2 3 4\n")


@pytest.mark.parametrize("args,needle", [
    (["missing.obj"], "mesh not found"),
    (["garbage.ply"], "cannot read mesh"),
    (["empty.obj"], "no geometry"),
    (["cloud.ply"], "point cloud (30 points, no faces)"),
    (["flat.obj"], "all 2 faces are degenerate"),
    (["--encoder", "hashgird"], "unknown encoder 'hashgird'"),
    (["--steps", "0"], "--steps must be at least 1"),
])
def test_cli_bad_input(tmp_path, capsys, args, needle):
    _bad_files(tmp_path)
    args = [str(tmp_path / a) if a.endswith((".obj", ".ply")) else a for a in args]
    code, _, err = _cli(["fit", "sdf", *args, "--out", tmp_path / "r", "--quiet"], capsys)
    assert code == 2, err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert " -> " in err  # the problem and its fix


def test_cli_fit_sdf_runs(tmp_path, capsys):
    trimesh.creation.box(extents=(2.0, 1.0, 1.0)).export(str(tmp_path / "box.stl"))
    code, out, _ = _cli(["fit", "sdf", tmp_path / "box.stl", "--encoder", _small_grid_file(tmp_path), "--steps", "3",
                         "--samples", "2000", "--batch-size", "512", "--resolution", "32", "--iou-resolution", "32",
                         "--metric-samples", "2000",
                         "--preview-size", "24", "--out", tmp_path / "r", "--device", "cpu", "--quiet"], capsys)
    assert code == 0 and "IoU" in out and "Chamfer-L1" in out
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["data"]["mesh"]["watertight"] and cfg["data"]["normalization"]["scale"] == pytest.approx(0.45)


def test_cli_render_of_a_missing_or_foreign_run(tmp_path, capsys):
    code, _, err = _cli(["render-sdf", tmp_path / "nope"], capsys)
    assert code == 2 and "run folder not found" in err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fit_sdf_on_cuda_matches_the_cpu_quality(tmp_path):
    kw = dict(encoder=_small_grid_file(tmp_path), steps=CI_STEPS, n_samples=50_000, batch_size=4096, resolution=96,
              iou_resolution=64, metric_samples=10_000, preview_size=48, progress=False)
    m = fit_sdf(None, out=tmp_path / "gpu", device="cuda", **kw)
    assert m["device"].startswith("cuda") and m["iou"] >= CI_IOU and m["chamfer_l1"] <= CI_CHAMFER, m
    run = fieldstudio.load_run(tmp_path / "gpu", device="cuda")
    x = torch.rand(1000, 3, device="cuda")
    assert run.field.sdf(x).device.type == "cuda"
    # second-order losses on the GPU (Smoothstep grid + eikonal + normals)
    m2 = fit_sdf(None, out=tmp_path / "eik", device="cuda", eikonal=0.1, normal_weight=0.1,
                 **{**kw, "steps": 20, "encoder": "hashgrid"})
    assert np.isfinite(m2["final_loss"])
