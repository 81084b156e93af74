"""PVD distillation: virtual cameras, stage switching, and a student that matches an analytic teacher."""

import math

import torch
from torch import nn

from fieldstudio.fields.radiance import NGPRadianceField
from fieldstudio.fields.radiance_grids import VoxelField
from fieldstudio.renderers.distill import DistillSchedule, LossWeights, check_channels, distill, has_feature
from fieldstudio.renderers.occupancy import OccupancyGrid
from fieldstudio.renderers.virtual_views import VirtualCameras
from fieldstudio.renderers.volume import accumulate_along_rays, march, render_weight_from_density

AABB = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
STEP = math.sqrt(3) / 128


class ColouredSphere(nn.Module):
    """An analytic teacher: an opaque ball of radius 0.25 at the centre, coloured by position."""

    channel_names = ("density", "log_density", "feature", "rgb")

    def __init__(self):
        super().__init__()
        self.register_buffer("w", torch.randn(3, 15, generator=torch.Generator().manual_seed(0)))

    def channels(self, x, d=None):
        r = (x - 0.5).norm(dim=-1)
        raw = 40.0 * (0.25 - r)
        log = raw.clamp(-2, 7)
        out = {"log_density": log, "density": torch.exp(log),
               "feature": torch.cat([raw[..., None], torch.sin(3 * x @ self.w)], -1)}
        if d is not None:
            out["rgb"] = torch.stack([x[..., 0], 1 - x[..., 1], 0.5 + 0.3 * torch.sin(8 * x[..., 2])], -1).clamp(0, 1)
        return out


def _teacher_grid(teacher):
    grid = OccupancyGrid(AABB, resolution=16)
    grid.refresh(lambda p: teacher.channels(p)["density"] * STEP, all_cells=True)
    return grid


def _cameras():
    return VirtualCameras([0.5, 0.5, 0.5], 1.5, fov_deg=30.0, n_cameras=20)


def test_virtual_cameras_sit_on_their_sphere_and_look_at_the_scene():
    cams = VirtualCameras([0.5, 0.5, 0.5], 2.0, elevation=(10.0, 60.0), fov_deg=20.0, n_cameras=50)
    pos = cams.regenerate(torch.Generator().manual_seed(0))
    rel = pos - 0.5
    torch.testing.assert_close(rel.norm(dim=-1), torch.full((50,), 2.0))
    elev = torch.rad2deg(torch.asin(rel[:, 2] / 2.0))
    assert (elev >= 10 - 1e-4).all() and (elev <= 60 + 1e-4).all()
    rays = cams.rays(500, AABB, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(rays.directions.norm(dim=-1), torch.ones(500))
    # a 20 degree cone at distance 2 covers a 0.7-wide patch around the centre: every ray hits the unit box
    assert bool(rays.hit.all())
    to_centre = torch.nn.functional.normalize(0.5 - rays.origins, dim=-1)
    assert ((rays.directions * to_centre).sum(-1) >= math.cos(math.radians(10 * math.sqrt(2))) - 1e-4).all()


def test_virtual_cameras_from_real_poses():
    ang = torch.linspace(0, 2 * math.pi, 9)[:-1]
    pos = torch.stack([0.5 + torch.cos(ang), 0.5 + torch.sin(ang), torch.full_like(ang, 0.5 + 0.3)], -1)
    c2w = torch.zeros(8, 3, 4)
    c2w[:, :3, 1] = torch.tensor([0.0, 0.0, 1.0])
    c2w[:, :3, 3] = pos
    cams = VirtualCameras.from_poses(c2w, [0.5, 0.5, 0.5], fov_deg=30.0)
    assert abs(cams.radius - math.hypot(1.0, 0.3)) < 1e-5
    e = math.degrees(math.atan2(0.3, 1.0))
    assert abs(cams.elevation[0] - e) < 1e-3 and abs(cams.elevation[1] - e) < 1e-3


def test_schedule_stages():
    s = DistillSchedule(2, 5)
    assert [s.stage(i) for i in range(7)] == [1, 1, 2, 2, 2, 3, 3]
    assert [s.stage(i, with_features=False) for i in range(7)] == [2, 2, 2, 2, 2, 3, 3]
    assert DistillSchedule.for_steps(30000) == DistillSchedule(2000, 5000)


def _small_student():
    enc = {"otype": "HashGrid", "n_levels": 8, "n_features_per_level": 2, "log2_hashmap_size": 14,
           "base_resolution": 8, "per_level_scale": 1.4}
    return NGPRadianceField({"encoding": enc, "log_density_clip": [-2.0, 7.0]}, backend="torch")


def test_stages_switch_at_the_configured_steps():
    torch.manual_seed(0)
    teacher = ColouredSphere()
    grid = _teacher_grid(teacher)
    for student, expect in ((_small_student(), [1, 1, 1, 2, 2, 3, 3, 3]),
                            (VoxelField({"resolution": 8, "log_density_clip": [-2.0, 7.0]}), [2, 2, 2, 2, 2, 3, 3, 3])):
        seen = []
        res = distill(teacher, student, aabb=AABB, grid=grid, render_step_size=STEP, cameras=_cameras(), steps=8,
                      schedule=DistillSchedule(3, 5), n_rays=64, log_every=1,
                      callback=lambda s, r: seen.append(r["stage"]))
        assert seen == expect
        assert res.steps == 8 and res.stage_starts[3] == 5
        assert len(res.history) == 8 and all(math.isfinite(h["loss"]) for h in res.history)


def test_feature_stage_moves_only_the_front_end():
    torch.manual_seed(0)
    teacher = ColouredSphere()
    student = _small_student()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    distill(teacher, student, aabb=AABB, grid=_teacher_grid(teacher), render_step_size=STEP, cameras=_cameras(),
            steps=3, schedule=DistillSchedule(3, 3), n_rays=64)
    after = student.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith("encoding."))
    assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith("density_network"))
    assert all(torch.equal(before[k], after[k]) for k in after if k.startswith("rgb_network"))


def _render(fld, rays, grid, n):
    with torch.no_grad():
        o, d = rays.origins, rays.directions
        t_max = torch.where(rays.hit, rays.t_far, rays.t_near - 1.0)
        ri, ts, te = march(o, d, grid=grid, render_step_size=STEP, t_min=rays.t_near, t_max=t_max)
        x = o[ri] + d[ri] * ((ts + te) * 0.5)[:, None]
        ch = fld.channels(x, d[ri])
        w, _, _ = render_weight_from_density(ts, te, torch.exp(ch["log_density"].clamp(-2, 7)), ri, n)
        return accumulate_along_rays(w, ch["rgb"], ri, n) + (1 - accumulate_along_rays(w, None, ri, n))


def test_student_matches_an_analytic_teacher():
    torch.manual_seed(0)
    teacher = ColouredSphere()
    grid = _teacher_grid(teacher)
    student = _small_student()
    untrained = _small_student()
    untrained.load_state_dict(student.state_dict())
    res = distill(teacher, student, aabb=AABB, grid=grid, render_step_size=STEP, cameras=_cameras(), steps=60,
                  n_rays=256, lr=3e-2)
    assert res.stage_starts == {1: 0, 2: 4, 3: 10}
    cams = _cameras()
    cams.regenerate(torch.Generator().manual_seed(123))
    rays = cams.rays(3000, AABB, generator=torch.Generator().manual_seed(124))
    ref = _render(teacher, rays, grid, 3000)

    def psnr(f):
        return -10 * math.log10(float(torch.mean((_render(f, rays, grid, 3000) - ref) ** 2)))

    before, after = psnr(untrained), psnr(student)
    assert after > 30.0, (before, after)
    assert after > before + 10


def test_channel_checks():
    assert has_feature(ColouredSphere()) and not has_feature(VoxelField({"resolution": 4}))

    class NoColour(nn.Module):
        def channels(self, x, d=None):
            return {"log_density": x[..., 0]}

    try:
        check_channels(NoColour(), "the student")
    except ValueError as exc:
        assert "rgb" in str(exc)
    else:
        raise AssertionError("a field without rgb passed the channel check")
    assert LossWeights().rgb == 1.0


def test_a_voxel_student_keeps_sparse_gradients_and_an_empty_batch_takes_no_step():
    from fieldstudio.optim import LazyAdam

    torch.manual_seed(0)
    teacher = ColouredSphere()
    student = VoxelField({"resolution": 8, "log_density_clip": [-2.0, 7.0]})

    class Spy(LazyAdam):
        sparse = []

        def step(self, closure=None):
            Spy.sparse.append(self.param_groups[0]["params"][0].grad.is_sparse)
            return super().step(closure)

    opt = Spy(student.parameters(), lr=0.1)
    distill(teacher, student, aabb=AABB, grid=_teacher_grid(teacher), render_step_size=STEP, cameras=_cameras(),
            steps=6, schedule=DistillSchedule(0, 3), n_rays=64, optimizer=opt)
    assert Spy.sparse == [True] * 6

    empty = OccupancyGrid(AABB, resolution=16)
    empty.refresh(lambda p: torch.zeros(p.shape[0]), all_cells=True)  # nothing occupied: no ray draws a sample
    before = student.grid.detach().clone()
    res = distill(teacher, student, aabb=AABB, grid=empty, render_step_size=STEP, cameras=_cameras(), steps=3,
                  schedule=DistillSchedule(0, 1), n_rays=64, optimizer=opt, log_every=1)
    assert res.steps == 3 and len(Spy.sparse) == 6 and torch.equal(student.grid, before)
    assert all(h["samples"] == 0 for h in res.history)


def test_visible_colour_loss_is_the_rendering_weighted_mean():
    from fieldstudio.renderers.distill import _color_loss

    g = torch.Generator().manual_seed(0)
    a, b, w = torch.rand(50, 3, generator=g), torch.rand(50, 3, generator=g), torch.rand(50, generator=g)
    w[::2] = 0
    ref = sum(w[i] * ((a[i] - b[i]) ** 2).mean() for i in range(50)) / w.sum()
    torch.testing.assert_close(_color_loss(a, b, w), ref)
    a[::2] = 5.0  # samples the teacher's rendering does not weigh do not count
    torch.testing.assert_close(_color_loss(a, b, w), ref)
    torch.testing.assert_close(_color_loss(a, b, None), ((a - b) ** 2).mean())


def test_visible_colour_ignores_colour_errors_in_empty_space():
    class WrongInEmptySpace(nn.Module):
        """The sphere teacher with its colour off by 0.5 outside the ball (density at most 1)."""

        def __init__(self):
            super().__init__()
            self.teacher = ColouredSphere()
            self.scale = nn.Parameter(torch.ones(()))

        def channels(self, x, d=None):
            out = dict(self.teacher.channels(x, d))
            if d is not None:
                out["rgb"] = out["rgb"] + 0.5 * self.scale * (out["log_density"] <= 0).float()[..., None]
            return out

    teacher = ColouredSphere()
    grid = _teacher_grid(teacher)
    losses = {}
    for visible in (False, True):
        w = LossWeights(rgb=0.0, log_density=0.0, feature=0.0, color=1.0, visible_color=visible)
        res = distill(teacher, WrongInEmptySpace(), aabb=AABB, grid=grid, render_step_size=STEP, cameras=_cameras(),
                      steps=1, schedule=DistillSchedule(0, 1), weights=w, n_rays=256, lr=1e-12, log_every=1)
        losses[visible] = res.history[0]["loss"]
    # about a fifth of the samples drawn lie outside the ball, where the rendering weights are small
    assert losses[False] > 0.02, losses
    assert losses[True] < 0.3 * losses[False], losses
