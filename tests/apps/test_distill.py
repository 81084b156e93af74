"""`fieldstudio distill`: a tiny trained teacher -> a student run that render / export-mesh open; errors."""

import json

import pytest
import torch

from fieldstudio import runs
from fieldstudio.apps.cli import main
from fieldstudio.apps.distill import STUDENTS, distill_run
from fieldstudio.apps.reconstruct import load_scene_run, reconstruct
from fieldstudio.errors import ConfigError, InputError
from fieldstudio.fields.radiance_grids import VoxelField

SHORT = dict(progress=False, device="cpu", target_samples=4096, grid_resolution=32, checkpoint_every=20)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    out = tmp_path_factory.mktemp("teacher") / "run"
    reconstruct(None, steps=40, out=out, eval_views=1, **SHORT)
    return out


def test_cli_distills_into_a_scene_run_that_render_and_export_open(teacher, tmp_path, capsys):
    out = tmp_path / "vox"
    rc = main(["distill", str(teacher), "--to", "voxels", "--steps", "12", "--rays", "256", "--out", str(out),
               "--eval-views", "1", "--quiet"])
    assert rc == 0
    assert "student vs teacher" in capsys.readouterr().out
    cfg = json.loads((out / runs.CONFIG).read_text())
    assert cfg["kind"] == "scene" and cfg["field"]["otype"] == "VoxelField"
    assert cfg["field"]["log_density_clip"] == [-2.0, 7.0]
    assert cfg["train"]["distill"]["schedule"]["feature_stage"] is False  # voxels have no feature
    metrics = json.loads((out / runs.METRICS).read_text())
    assert metrics["steps"] == 12 and metrics["test_views"] == 1 and "psnr" in metrics
    # no feature stage for voxels: points from step 0, rendering from 12 * 5/30 = 2
    assert metrics["stage_starts"] == {"2": 0, "3": 2}
    assert json.loads((out / runs.HISTORY).read_text())[-1]["stage"] == 3
    model, _ = load_scene_run(out, device="cpu")
    assert isinstance(model.field, VoxelField)
    teacher_model, _ = load_scene_run(teacher, device="cpu")
    assert torch.equal(model.grid.binaries, teacher_model.grid.binaries)  # the student keeps the teacher's grid
    assert main(["render", str(out), "--frames", "2", "--out", str(tmp_path / "orbit.gif"), "--quiet",
                 "--no-depth"]) == 0
    assert (tmp_path / "orbit.gif").exists()
    with torch.no_grad():
        thr = float(model.field.density(torch.rand(20000, 3)).quantile(0.99))
    assert main(["export-mesh", str(out), "--resolution", "24", "--threshold", f"{thr:.4f}",
                 "--out", str(tmp_path / "m.ply")]) == 0
    assert (tmp_path / "m.ply").exists()


def test_distilled_student_approaches_the_teacher(teacher, tmp_path):
    """A hash-grid student distilled for a few dozen steps renders the test view far closer to the
    teacher's rendering than the same student untrained."""
    m = distill_run(teacher, "hashgrid", out=tmp_path / "h", steps=40, n_rays=512, eval_views=1, progress=False)
    assert m["stage_starts"] == {1: 0, 2: 3, 3: 7}
    teacher_m = json.loads((teacher / runs.METRICS).read_text())
    assert m["psnr"] > teacher_m["psnr"] - 6.0
    assert m["psnr_vs_teacher_last"] > 20.0


def test_resume_continues_to_the_total_steps(teacher, tmp_path):
    out = tmp_path / "r"
    distill_run(teacher, "tensorf", out=out, steps=4, n_rays=128, eval_views=1, progress=False, checkpoint_every=2)
    with pytest.raises(Exception, match="already holds a run"):
        distill_run(teacher, "tensorf", out=out, steps=6, progress=False)
    m = distill_run(teacher, "tensorf", out=out, steps=6, n_rays=128, eval_views=1, progress=False, resume=True)
    assert m["steps"] == 6
    assert json.loads((out / runs.CONFIG).read_text())["step"] == 6


def test_resume_keeps_the_runs_loss_weights(teacher, tmp_path):
    from fieldstudio.renderers.distill import LossWeights

    out = tmp_path / "w"
    distill_run(teacher, "tensorf", out=out, steps=2, n_rays=64, progress=False, weights=LossWeights(color=0.3))
    cfg_path = out / runs.CONFIG
    cfg = json.loads(cfg_path.read_text())
    assert cfg["train"]["distill"]["loss_weights"]["color"] == 0.3
    assert cfg["train"]["distill"]["loss_weights"]["visible_color"] is True
    # a run written before the visible-colour mean existed resumes with the plain mean it began with
    del cfg["train"]["distill"]["loss_weights"]["visible_color"]
    cfg_path.write_text(json.dumps(cfg))
    distill_run(teacher, "tensorf", out=out, steps=3, n_rays=64, progress=False, resume=True)
    w = json.loads(cfg_path.read_text())["train"]["distill"]["loss_weights"]
    assert w["color"] == 0.3 and w["visible_color"] is False


def test_finetune_time_alone_runs_as_many_steps_as_fit(teacher, tmp_path):
    m = distill_run(teacher, "voxels", out=tmp_path / "f", steps=3, n_rays=128, eval_views=1, progress=False,
                    finetune_time=0.5)
    assert m["finetune_steps"] >= 2 and 0.5 <= m["finetune_seconds"] < 5.0
    cfg = json.loads((tmp_path / "f" / runs.CONFIG).read_text())
    assert cfg["train"]["distill"]["finetune_time"] == 0.5


def test_finetune_trains_like_reconstruct(teacher, monkeypatch):
    """The real-image stage adapts its ray count to the sample target and decays the rate from the
    student's lr along a cosine (a fixed tenth of the rate on fixed rays fine-tuned too little)."""
    from fieldstudio.apps import distill as app

    model, cfg = load_scene_run(teacher, device="cpu")
    ds = app._open_dataset(cfg, None, torch.device("cpu"))
    rays, samples, lrs = [], [], []
    render = model.render_rays

    def counting_render(r, bg, **kw):
        out = render(r, bg, **kw)
        rays.append(len(bg))
        samples.append(out[3])
        return out

    monkeypatch.setattr(model, "render_rays", counting_render)
    make_adam = app.make_adam

    def recording_adam(*a, **kw):
        opt = make_adam(*a, **kw)
        opt.register_step_pre_hook(lambda o, *_: lrs.append(o.param_groups[0]["lr"]))
        return opt

    monkeypatch.setattr(app, "make_adam", recording_adam)
    target = 1 << 15  # the CPU default; this little teacher draws about 100 samples a ray
    done, _ = app._finetune(model, ds, 10, 1e-2, seed=0, target_samples=target)
    assert done == 10 and len(rays) == 10 and rays[0] == 1024
    assert all(0.5 * target < s < 2.0 * target for s in samples[-3:]), (rays, samples)
    assert lrs[0] == pytest.approx(1e-2) and all(a > b for a, b in zip(lrs, lrs[1:]))
    assert lrs[-1] < 0.1 * 1e-2


def test_finetune_without_the_teachers_images_fails_before_training(teacher, tmp_path):
    moved = tmp_path / "t"
    moved.mkdir()
    for f in teacher.iterdir():
        if f.is_file():
            (moved / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((moved / runs.CONFIG).read_text())
    cfg["scene"]["data"] = str(tmp_path / "gone")  # the scene folder the teacher was trained on is missing
    (moved / runs.CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="fine-tuning needs the teacher's training images"):
        distill_run(moved, "voxels", out=tmp_path / "o", steps=3, progress=False, finetune_steps=5)
    assert not (tmp_path / "o" / runs.STATE).exists()


def test_errors_are_one_line_with_the_supported_choices(teacher, tmp_path, capsys):
    assert main(["distill", str(tmp_path / "nope"), "--to", "mlp", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "teacher run not found" in err and len(err.splitlines()) == 1
    assert main(["distill", str(teacher), "--to", "octree", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown student type 'octree'" in err and all(k in err for k in STUDENTS)
    image_run = tmp_path / "img"
    image_run.mkdir()
    (image_run / runs.CONFIG).write_text(json.dumps({"kind": "image", "field": {"otype": "ImageField"}}))
    assert main(["distill", str(image_run), "--to", "mlp", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a radiance field teacher" in err and "NGPRadianceField" in err


def test_a_student_without_colour_is_refused(teacher, tmp_path):
    class DensityOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def channels(self, x, d=None):
            return {"log_density": x[..., 0] + self.w}

    with pytest.raises(ConfigError, match="lack rgb"):
        distill_run(teacher, "custom", student=DensityOnly(), out=tmp_path / "c", steps=2, progress=False)


def test_studio_distill_job_and_its_input_checks(teacher, tmp_path):
    from fieldstudio.apps.studio import common, tab_distill
    from fieldstudio.apps.studio.jobs import DONE, JobManager

    manager = JobManager(max_running=1, max_queued=1)
    try:
        job = manager.wait(manager.submit(
            lambda ctx: tab_distill.distill_job(ctx, teacher=str(teacher), to="tensorf", steps=6, out=tmp_path / "s",
                                                n_rays=128, eval_views=1, finetune_steps=2), kind="distill", label="distill", total=6,
            out=tmp_path / "s").id)
        assert job.status == DONE, job.error
        assert "weights.safetensors" in job.outputs and job.phase.startswith("finished")
        assert [r["stage"] for r in job.history][-1] == 3
        m = json.loads((tmp_path / "s" / runs.METRICS).read_text())
        assert m["finetune_steps"] == 2 and m["finetune_seconds"] > 0  # real-image last stage
        studio = common.Studio(manager=manager, workdir=tmp_path / "w")
        with pytest.raises(InputError, match="teacher run not found"):
            tab_distill.start_distill(studio, str(tmp_path / "missing"), "mlp", 10)
        with pytest.raises(ConfigError, match="unknown student type"):
            tab_distill.start_distill(studio, str(teacher), "octree", 10)
    finally:
        manager.shutdown()


def test_cam_student_distills_with_directions_in_every_stage(teacher, tmp_path):
    m = distill_run(teacher, "cam", out=tmp_path / "c", steps=12, n_rays=256, eval_views=1, progress=False)
    assert m["stage_starts"] == {1: 0, 2: 1, 3: 2}
    model, cfg = load_scene_run(tmp_path / "c", device="cpu")
    assert cfg["field"]["cam"]["coordinates"] == "direction" and model.field.view_dependent_density
    # the grid was trained through the stages: gamma (channel 0) left 1 and beta (channel 1) left 0
    grid = model.field.cam.grid.detach()
    assert (grid[:, 0] - 1).abs().max() > 1e-4 and grid[:, 1].abs().max() > 1e-4


def test_grid_students_span_the_teachers_occupied_box(teacher, tmp_path):
    from fieldstudio.apps.distill import load_teacher

    # a copy of the real teacher, its grid emptied below the middle in z so the box is certain to shrink
    import shutil

    src = tmp_path / "teacher"
    shutil.copytree(teacher, src)
    model, _ = load_teacher(src, device="cpu")
    rz = model.grid.binaries.shape[3]
    model.grid.binaries[0, :, :, : rz // 2] = False
    runs.save_weights(src / runs.WEIGHTS, model)
    want = load_teacher(src, device="cpu")[0].occupied_bounds()
    assert want is not None and want[0][2] >= 0.5 - 1 / rz
    for kind in ("tensorf", "voxels"):
        distill_run(src, kind, out=tmp_path / kind, steps=3, n_rays=64, eval_views=1, progress=False)
        assert json.loads((tmp_path / kind / runs.CONFIG).read_text())["field"]["bounds"] == want
    distill_run(src, "voxels", out=tmp_path / "full", steps=3, n_rays=64, eval_views=1, progress=False,
                fit_box=False)
    assert json.loads((tmp_path / "full" / runs.CONFIG).read_text())["field"]["bounds"] is None


def test_student_config_replaces_the_builders_entries(teacher, tmp_path, capsys):
    """`--student-config` (inline or a file) sizes the student, the run reopens with that size, and
    `reconstruct`'s own choices (PVD's clamp, the occupied box) stay unless replaced."""
    out = tmp_path / "vox"
    assert main(["distill", str(teacher), "--to", "voxels", "--steps", "2", "--rays", "64", "--out", str(out),
                 "--eval-views", "1", "--quiet", "--student-config", '{"resolution": 12, "sh_degree": 2}']) == 0
    model, cfg = load_scene_run(out, device="cpu")
    assert tuple(model.field.grid.shape) == (12, 12, 12, 1 + 3 * 4)
    assert cfg["field"]["log_density_clip"] == [-2.0, 7.0] and cfg["field"]["bounds"] is not None
    spec = tmp_path / "nerf.json"
    spec.write_text(json.dumps({"n_neurons": 32, "n_hidden_layers": 3, "skips": [1]}))
    assert main(["distill", str(teacher), "--to", "mlp", "--steps", "2", "--rays", "64", "--out", str(tmp_path / "m"),
                 "--eval-views", "1", "--quiet", "--student-config", str(spec)]) == 0
    model, _ = load_scene_run(tmp_path / "m", device="cpu")
    assert [layer.out_features for layer in model.field.trunk] == [32, 32, 32]
    assert model.field.trunk[2].in_features == 32 + 63  # the skip after layer 1 feeds the encoded position again
    capsys.readouterr()
    for bad, says in (('{"resolutoin": 12}', "did you mean 'resolution'"),
                      ('{"resolution": 12,}', "not valid JSON"),
                      (str(tmp_path / "missing.json"), "neither a JSON object nor a file"),
                      ('{"log_density_clip": [-5, 9]}', "shared with the teacher")):
        assert main(["distill", str(teacher), "--to", "voxels", "--steps", "2", "--out", str(tmp_path / "bad"),
                     "--student-config", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert says in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "bad" / runs.STATE).exists()
    with pytest.raises(ConfigError, match="both given"):
        distill_run(teacher, "voxels", student=VoxelField({"resolution": 4}), student_config={"resolution": 8},
                    out=tmp_path / "both", steps=2, progress=False)
