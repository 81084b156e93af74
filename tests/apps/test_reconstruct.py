"""Scene reconstruction end to end on the bundled procedural scene (a CI-sized run), resume, outputs."""

import json

import numpy as np
import pytest
import torch

import fieldstudio
from fieldstudio import runs
from fieldstudio.apps.cli import main
from fieldstudio.apps.reconstruct import SceneModel, load_scene_run, reconstruct
from fieldstudio.datasets.scene import load_scene
from fieldstudio.errors import InputError
from fieldstudio.fields.radiance import NGPRadianceField

SHORT = dict(progress=False, device="cpu", target_samples=4096, grid_resolution=32, checkpoint_every=20)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    out = tmp_path_factory.mktemp("scene") / "run"
    metrics = reconstruct(None, steps=60, out=out, eval_views=2, **SHORT)
    return out, metrics


def _white_baseline_psnr(views):
    ds = load_scene(None)
    vals = []
    for i in ds.split("test")[:views]:
        gt = ds.image(int(i), "white").numpy()
        vals.append(-10 * np.log10(np.mean((1.0 - gt) ** 2)))
    return float(np.mean(vals))


def test_short_reconstruction_learns_the_scene(short_run):
    out, m = short_run
    baseline = _white_baseline_psnr(2)  # what an empty (all-background) field scores
    assert m["psnr"] >= baseline + 3.0, (m["psnr"], baseline)
    assert m["test_views"] == 2 and m["steps"] == 60
    assert 0 < m["occupied_fraction"] < 0.9  # the grid carved empty space
    for name in ("config.json", "weights.safetensors", "metrics.json", "history.json", "state.pt"):
        assert (out / name).exists(), name
    assert json.loads((out / "metrics.json").read_text())["protocol"].startswith("all 2 test views")


def test_run_reopens_as_field_and_as_scene(short_run):
    out, _ = short_run
    run = runs.load_run(out)
    assert isinstance(run.field, NGPRadianceField)
    model, cfg = load_scene_run(out, device="cpu")
    assert cfg["kind"] == "scene" and model.grid.occupied_fraction() < 0.9
    x = torch.rand(64, 3)
    torch.testing.assert_close(run.field.density(x), model.field.density(x))


def test_render_and_export(short_run, tmp_path, capsys):
    out, _ = short_run
    assert main(["render", str(out), "--frames", "2", "--out", str(tmp_path / "orbit.gif"), "--quiet"]) == 0
    assert (tmp_path / "orbit.gif").exists() and (tmp_path / "orbit_depth.gif").exists()
    from fieldstudio.apps.render_scene import export_scene_mesh

    model, _ = load_scene_run(out, device="cpu")
    with torch.no_grad():
        dens = model.field.density(torch.rand(20000, 3))
    thr = float(dens.quantile(0.99))
    info = export_scene_mesh(out, resolution=32, out=tmp_path / "m.ply", threshold=thr)
    assert info["faces"] > 0 and (tmp_path / "m.ply").exists()


def _stop_at_step_3_then_resume(monkeypatch, out, **kw):
    """Run ``reconstruct`` stopped during step 4 (after its step-3 checkpoint, as if by Ctrl-C), then resume it."""
    import fieldstudio.apps.reconstruct as rec

    real_train = rec.train

    def interrupted_train(model, step_fn, *args, **kwargs):
        def stepper(step):
            if step == 3:
                raise KeyboardInterrupt
            return step_fn(step)

        return real_train(model, stepper, *args, **kwargs)

    monkeypatch.setattr(rec, "train", interrupted_train)
    with pytest.raises(KeyboardInterrupt):
        reconstruct(None, out=out, **kw)
    monkeypatch.setattr(rec, "train", real_train)
    reconstruct(None, out=out, resume=True, **kw)


def test_resume_continues_exactly(tmp_path, monkeypatch):
    """A run stopped after its step-3 checkpoint and resumed ends where an uninterrupted run ends."""
    kw = dict(SHORT, eval_views=1, checkpoint_every=3, steps=6)
    reconstruct(None, out=tmp_path / "a", **kw)
    _stop_at_step_3_then_resume(monkeypatch, tmp_path / "b", **kw)
    a = runs.load_run(tmp_path / "a").field.state_dict()
    b = runs.load_run(tmp_path / "b").field.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)


def test_bad_inputs(tmp_path, capsys):
    assert main(["reconstruct", str(tmp_path / "nope"), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "Traceback" not in err and err.count("\n") == 1
    with pytest.raises(InputError, match="not a scene"):
        from fieldstudio.apps.fit_image import fit_image

        fit_image("camera", crop=16, steps=1, out=tmp_path / "img", progress=False, device="cpu")
        load_scene_run(tmp_path / "img")


def test_cpu_and_gpu_defaults():
    from fieldstudio.apps.reconstruct import scene_defaults
    from fieldstudio.fields.radiance import NGP_ENCODING

    gpu = scene_defaults(800, 800, torch.device("cuda"))
    assert gpu["field_config"] == {} and gpu["target_samples"] == 1 << 16  # instant-ngp's paper config
    assert gpu["render_step_size"] == pytest.approx(3 ** 0.5 / 1024)
    cpu = scene_defaults(200, 200, torch.device("cpu"))
    enc = cpu["field_config"]["encoding"]
    assert enc["log2_hashmap_size"] == 17 and enc["n_levels"] == NGP_ENCODING["n_levels"]
    finest = 16 * enc["per_level_scale"] ** 15
    assert finest == pytest.approx(512, rel=1e-4)
    assert scene_defaults(800, 600, torch.device("cpu"))["field_config"]["encoding"]["log2_hashmap_size"] == 18
    assert scene_defaults(200, 200, torch.device("cpu"), field="nerf")["field_config"] == {}


def test_psnr_curve_is_recorded(tmp_path):
    m = reconstruct(None, steps=8, out=tmp_path / "c", eval_views=1, eval_every=4, eval_every_views=1, **SHORT)
    steps = [c["step"] for c in m["curve"]]
    assert steps == [4, 8] and all(np.isfinite(c["psnr"]) for c in m["curve"])
    assert m["curve"][-1]["psnr"] == m["psnr"]
    assert m["curve"][0]["seconds"] <= m["curve"][1]["seconds"]


LEGO = __import__("pathlib").Path(__file__).resolve().parents[3] / "shared" / "data" / "nerf_lego_blender"


@pytest.mark.slow
@pytest.mark.skipif(not LEGO.exists(), reason=f"shared lego data not found at {LEGO}")
def test_lego_reaches_30_db_on_cpu(tmp_path):
    """The full benchmark run (about an hour on 2 busy cores): CPU defaults, 2500 steps."""
    m = reconstruct(str(LEGO), steps=2500, out=tmp_path / "lego", progress=False, device="cpu")
    assert m["psnr"] >= 30.0 and m["peak_memory_mb"] <= 4096


# --- NeuRBF position encoding -------------------------------------------------------------------

def test_neurbf_radiance_field_is_iso_parameter():
    from fieldstudio.apps.scene_kernels import neurbf_radiance_config
    from fieldstudio.fields.radiance import NGPRadianceField

    ref = sum(p.numel() for p in NGPRadianceField({}, backend="torch").parameters())
    fld = NGPRadianceField(neurbf_radiance_config(), backend="torch")
    total = sum(p.numel() for p in fld.parameters())
    assert ref - fld.encoding.params_per_kernel < total <= ref


class _Blob(torch.nn.Module):
    """Opaque ball of radius 0.2 with a striped feature inside; empty elsewhere."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def channels(self, x):
        inside = ((x - 0.5).norm(dim=-1) < 0.2).float()
        feat = torch.stack([torch.zeros_like(inside), torch.sin(40 * x[:, 0]) * inside, inside], -1)
        return {"density": 50.0 * inside, "feature": feat}


def test_placement_weights_are_opacity_times_feature_gradient():
    from fieldstudio.apps.scene_kernels import placement_weights

    pts, w = placement_weights(_Blob(), step_size=1e-2, resolution=24)
    r = np.linalg.norm(pts - 0.5, axis=1)
    assert w[r > 0.25].max() == 0.0  # no opacity, no weight
    assert (w[r < 0.18] > 0).mean() > 0.9  # opaque and textured


@pytest.mark.slow
def test_reconstruct_with_neurbf_runs_and_reopens(tmp_path):
    out = tmp_path / "rbf"
    m = reconstruct(None, steps=30, out=out, eval_views=1, encoder="neurbf", warmup_steps=10, **SHORT)
    assert np.isfinite(m["psnr"]) and m["steps"] == 30
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["field"]["encoding"]["otype"] == "NeuRBF" and cfg["train"]["kernel_init"]["n_kernels"] > 0
    run = fieldstudio.load_run(out)
    assert run.field.encoding.otype == "NeuRBF"


def test_stop_at_psnr_ends_after_a_confirmed_crossing(tmp_path):
    # 8 dB is passed within the first steps on the procedural scene: the run must stop at the
    # second curve point at or above it, long before its 200 steps
    m = reconstruct(None, steps=200, out=tmp_path / "s", eval_views=1, eval_every=2, eval_every_views=1,
                    stop_at_psnr=8.0, **SHORT)
    inner = m["curve"][:-1]
    assert m["steps"] < 200 and len(inner) >= 2
    assert inner[-1]["psnr"] >= 8.0 and inner[-2]["psnr"] >= 8.0
    assert all(min(a["psnr"], b["psnr"]) < 8.0 for a, b in zip(inner[:-2], inner[1:-1]))
    assert m["steps"] == inner[-1]["step"] + 1  # the step that found the confirmation still trains


def test_reconstruct_with_cam_runs_and_reopens(tmp_path, capsys):
    out = tmp_path / "cam"
    m = reconstruct(None, steps=20, out=out, eval_views=1, cam=True, **SHORT)
    assert np.isfinite(m["psnr"])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["cam"] is True and cfg["field"]["cam"]["coordinates"] == "direction"
    run = fieldstudio.load_run(out)
    assert run.field.cam is not None
    assert float(run.field.cam.grid.detach()[0, 1].abs().max()) > 0  # beta trained
    assert main(["reconstruct", "--field", "nerf", "--cam", "--out", str(tmp_path / "n"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--cam" in err and "Traceback" not in err


def test_occupied_bounds_is_the_box_of_level_zero_cells_in_field_coordinates():
    from fieldstudio.renderers.occupancy import OccupancyGrid

    unit = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])

    def bounds(grid, aabb=unit):
        return SceneModel(torch.nn.Identity(), grid, aabb, 0.01).occupied_bounds()

    grid = OccupancyGrid(unit, 8)
    grid.binaries.zero_()
    grid.binaries[0, 2:5, 1:7, 3:6] = True  # x cells 2-4, y 1-6, z 3-5, plus one cell of margin
    assert bounds(grid) == [[0.125, 0.0, 0.25], [0.75, 1.0, 0.875]]
    grid.binaries.fill_(True)  # the box is the scene's: no bounds
    assert bounds(grid) is None
    # a multi-level grid (unbounded scene) or one over another box: no bounds
    assert bounds(OccupancyGrid(unit, 8, levels=2)) is None
    grid.binaries[0, :4] = False
    assert bounds(grid, unit * 2) is None


@pytest.mark.parametrize("fit_box_at", [2, 5])  # the stop at step 3 comes after the shrink, or before it
def test_grid_field_shrinks_to_the_occupied_box_and_resumes_exactly(tmp_path, monkeypatch, fit_box_at):
    """``fit_box_at``: the TensoRF grid shrinks to the occupied box once; the run's config holds the
    box, and a run stopped at step 3 resumes to the same weights as one never stopped."""
    import fieldstudio.apps.reconstruct as rec

    box = [[0.1, 0.2, 0.15], [0.85, 0.8, 0.9]]
    calls = []

    def fixed_bounds(self):  # the procedural scene's grid is still all occupied after a few steps
        calls.append(1)
        return box

    monkeypatch.setattr(rec.SceneModel, "occupied_bounds", fixed_bounds)
    enc = {"otype": "TensorfVM", "n_components": 12, "resolution": 24}
    kw = dict(SHORT, eval_views=1, checkpoint_every=3, field="tensorf", fit_box_at=fit_box_at,
              field_config={"encoding": enc, "density_components": 4})
    m = reconstruct(None, steps=6, out=tmp_path / "a", **kw)
    assert m["bounds"] == box and len(calls) == 1
    cfg = json.loads((tmp_path / "a" / runs.CONFIG).read_text())
    assert cfg["field"]["bounds"] == box and cfg["train"]["fit_box_at"] == fit_box_at

    _stop_at_step_3_then_resume(monkeypatch, tmp_path / "b", steps=6, **kw)
    assert len(calls) == 2  # once in run a, once in run b (before its stop or after its resume), never twice
    a = runs.load_run(tmp_path / "a").field
    b = runs.load_run(tmp_path / "b").field
    assert b.config["bounds"] == box
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, b.state_dict()[k], rtol=1e-4, atol=1e-6, msg=k)


def test_fit_box_at_is_for_grid_fields(tmp_path):
    from fieldstudio.errors import ConfigError

    with pytest.raises(ConfigError, match="tensorf, voxels"):
        reconstruct(None, steps=2, out=tmp_path / "r", field="ngp", fit_box_at=10, **SHORT)
