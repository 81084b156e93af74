"""Ray generation against hand-computed rays: pinhole, OpenCV distortion, the aabb test, NDC."""

import math

import pytest
import torch

from fieldstudio.datasets.cameras import Cameras, look_at, opencv_to_opengl
from fieldstudio.datasets.scene import NDC, Normalization
from fieldstudio.renderers.rays import (camera_rays, distort, image_rays, ndc_rays, ray_aabb_intersect, undistort)


def _cams(c2w, fx, fy, cx, cy, w, h, dist=None):
    c2w = torch.as_tensor(c2w, dtype=torch.float32).reshape(-1, 3, 4)
    return Cameras(c2w, fx, fy, cx, cy, w, h, None if dist is None else torch.tensor(dist).reshape(-1, 4))


IDENTITY = torch.cat([torch.eye(3), torch.zeros(3, 1)], dim=1)


def test_centre_pixel_looks_down_minus_z_after_c2w():
    # 5 x 5 image: the centre pixel (2, 2) has its centre at (2.5, 2.5) = (cx, cy)
    cams = _cams(IDENTITY, 10.0, 10.0, 2.5, 2.5, 5, 5)
    o, d = camera_rays(cams, 0, torch.tensor([2]), torch.tensor([2]))
    torch.testing.assert_close(d, torch.tensor([[0.0, 0.0, -1.0]]))
    torch.testing.assert_close(o, torch.zeros(1, 3))
    # a camera at (1, 2, 3) turned 90 degrees about +z: its -z still points down the world's -z,
    # its +x (right) is the world's +y
    rz = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    cams = _cams(torch.cat([rz, torch.tensor([[1.0], [2.0], [3.0]])], 1), 10.0, 10.0, 2.5, 2.5, 5, 5)
    o, d = camera_rays(cams, 0, torch.tensor([2, 4]), torch.tensor([2, 2]))
    torch.testing.assert_close(o, torch.tensor([[1.0, 2.0, 3.0]] * 2))
    torch.testing.assert_close(d[0], torch.tensor([0.0, 0.0, -1.0]))
    # pixel (4, 2): u = 4.5, x = (4.5 - 2.5) / 10 = 0.2 to the camera's right = world +y
    torch.testing.assert_close(d[1], torch.tensor([0.0, 0.2, -1.0]) / math.sqrt(1.04))
    # a look-at camera's centre ray points at its target
    c2w = look_at([4.0, -3.0, 2.0], [0.5, 0.5, 0.5])
    cams = _cams(c2w, 50.0, 50.0, 2.5, 2.5, 5, 5)
    o, d = camera_rays(cams, 0, torch.tensor([2]), torch.tensor([2]))
    to_target = torch.tensor([0.5, 0.5, 0.5]) - torch.tensor([4.0, -3.0, 2.0])
    torch.testing.assert_close(d[0], to_target / to_target.norm())


def test_corner_pixel_from_fx_cx():
    # W = 4, H = 2, fx = 2, fy = 4, principal point at the centre (2, 1)
    cams = _cams(IDENTITY, 2.0, 4.0, 2.0, 1.0, 4, 2)
    o, d = camera_rays(cams, 0, torch.tensor([0, 3]), torch.tensor([0, 1]))
    # top-left pixel centre (0.5, 0.5): x = (0.5 - 2) / 2 = -0.75 (left), y = -(0.5 - 1) / 4 = +0.125 (up)
    want0 = torch.tensor([-0.75, 0.125, -1.0])
    # bottom-right pixel centre (3.5, 1.5): x = +0.75, y = -0.125
    want1 = torch.tensor([0.75, -0.125, -1.0])
    torch.testing.assert_close(d, torch.stack([want0 / want0.norm(), want1 / want1.norm()]))
    # fractional pixel indices are continuous positions: px = -0.5 is the image's left edge
    _, d = camera_rays(cams, 0, torch.tensor([-0.5]), torch.tensor([0.5]))
    want = torch.tensor([-1.0, 0.0, -1.0])
    torch.testing.assert_close(d[0], want / want.norm())


def test_image_rays_are_row_major():
    cams = _cams(IDENTITY, 3.0, 3.0, 2.0, 1.5, 4, 3)
    o, d = image_rays(cams, 0)
    assert d.shape == (12, 3)
    _, d21 = camera_rays(cams, 0, torch.tensor([2]), torch.tensor([1]))  # column 2, row 1
    torch.testing.assert_close(d.reshape(3, 4, 3)[1, 2], d21[0])


def _np_distort(x, y, k1, k2, p1, p2):
    # OpenCV's model written out independently of the library
    r2 = x * x + y * y
    rad = 1 + k1 * r2 + k2 * r2 * r2
    return (x * rad + 2 * p1 * x * y + p2 * (r2 + 2 * x * x), y * rad + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y)


@pytest.mark.parametrize("dist", [(-0.2, 0.05, 0.001, -0.002), (0.1, 0.0, 0.0, 0.0), (0.0, 0.0, 0.01, 0.005)])
def test_opencv_distortion_is_undone(dist):
    fx, fy, cx, cy, w, h = 100.0, 110.0, 64.0, 48.0, 128, 96
    cams = _cams(IDENTITY, fx, fy, cx, cy, w, h, dist)
    x = torch.tensor([0.0, 0.3, -0.4, 0.5, -0.2], dtype=torch.float64)
    y = torch.tensor([0.0, -0.2, 0.35, 0.4, -0.3], dtype=torch.float64)
    xd, yd = _np_distort(x, y, *dist)
    # the pixel where the distorted camera images direction (x, -y, -1) (OpenCV y points down)
    px, py = fx * xd + cx - 0.5, fy * yd + cy - 0.5
    _, d = camera_rays(cams, 0, px.float(), py.float())
    want = torch.stack([x, -y, -torch.ones_like(x)], -1).float()
    torch.testing.assert_close(d, want / want.norm(dim=-1, keepdim=True), atol=2e-6, rtol=0)
    # and the library's forward model agrees with the one written out here
    xd2, yd2 = distort(x, y, torch.tensor(dist, dtype=torch.float64).expand(5, 4))
    torch.testing.assert_close(xd2, xd)
    torch.testing.assert_close(yd2, yd)


def test_undistort_round_trip_on_a_grid():
    dist = torch.tensor([-0.25, 0.08, 0.002, -0.001], dtype=torch.float64)
    g = torch.linspace(-0.6, 0.6, 13, dtype=torch.float64)
    x, y = torch.meshgrid(g, g, indexing="ij")
    xd, yd = distort(x.reshape(-1), y.reshape(-1), dist.expand(169, 4))
    ux, uy = undistort(xd, yd, dist.expand(169, 4))
    assert float((ux - x.reshape(-1)).abs().max()) < 1e-9 and float((uy - y.reshape(-1)).abs().max()) < 1e-9


def test_distortion_only_where_the_camera_has_it():
    cams = Cameras(IDENTITY.expand(2, 3, 4).clone(), 50.0, 50.0, 16.0, 16.0, 32, 32,
                   torch.tensor([[0.0, 0.0, 0.0, 0.0], [-0.3, 0.0, 0.0, 0.0]]))
    px, py = torch.tensor([0, 0]), torch.tensor([0, 0])
    _, d = camera_rays(cams, torch.tensor([0, 1]), px, py)
    want = torch.tensor([(0.5 - 16) / 50, -(0.5 - 16) / 50, -1.0])
    torch.testing.assert_close(d[0], want / want.norm())
    assert not torch.allclose(d[1], d[0])
    assert cams.model == ["PINHOLE", "OPENCV"]


def test_ray_aabb_intersect_hand_values():
    aabb = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    s3 = 1 / math.sqrt(3)
    o = torch.tensor([[-1.0, 0.5, 0.5], [0.5, 0.5, 0.5], [-1.0, 2.0, 0.5], [-1.0, -1.0, -1.0], [2.0, 0.5, 0.5],
                      [0.5, 0.5, 3.0]])
    d = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [s3, s3, s3], [1.0, 0.0, 0.0],
                      [0.0, 0.0, -1.0]])
    tn, tf, hit = ray_aabb_intersect(o, d, aabb)
    assert hit.tolist() == [True, True, False, True, False, True]
    torch.testing.assert_close(tn[[0, 1, 3, 5]], torch.tensor([1.0, 0.0, math.sqrt(3), 2.0]))
    torch.testing.assert_close(tf[[0, 1, 3, 5]], torch.tensor([2.0, 0.5, 2 * math.sqrt(3), 3.0]))


def _nerf_ndc(h, w, focal, near, rays_o, rays_d):
    # NeRF's ndc_rays (run_nerf_helpers.py), in [-1, 1]^3 with a centred principal point
    t = -(near + rays_o[..., 2]) / rays_d[..., 2]
    rays_o = rays_o + t[..., None] * rays_d
    o0 = -1.0 / (w / (2.0 * focal)) * rays_o[..., 0] / rays_o[..., 2]
    o1 = -1.0 / (h / (2.0 * focal)) * rays_o[..., 1] / rays_o[..., 2]
    o2 = 1.0 + 2.0 * near / rays_o[..., 2]
    d0 = -1.0 / (w / (2.0 * focal)) * (rays_d[..., 0] / rays_d[..., 2] - rays_o[..., 0] / rays_o[..., 2])
    d1 = -1.0 / (h / (2.0 * focal)) * (rays_d[..., 1] / rays_d[..., 2] - rays_o[..., 1] / rays_o[..., 2])
    d2 = -2.0 * near / rays_o[..., 2]
    return torch.stack([o0, o1, o2], -1), torch.stack([d0, d1, d2], -1)


def test_ndc_hand_values_and_nerf_agreement():
    ndc = NDC(fx=1.0, fy=1.0, cx=1.0, cy=1.0, width=2, height=2, near=1.0, margin=0.0)
    o = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0]])
    d = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])
    q0, qd, t_far = ndc_rays(o, d, ndc)
    # ray 1: starts on the near plane at (0, 0, -1) -> cube (0.5, 0.5, 0), runs straight to z = 1
    torch.testing.assert_close(q0[0], torch.tensor([0.5, 0.5, 0.0]))
    torch.testing.assert_close(qd[0], torch.tensor([0.0, 0.0, 1.0]))
    # ray 2: (0.5, 0, -1) projects to u = 1.5 -> x = 0.75; at infinity it reaches x = 0.5: d = (-0.25, 0, 1)
    torch.testing.assert_close(q0[1], torch.tensor([0.75, 0.5, 0.0]))
    torch.testing.assert_close(qd[1] * t_far[1], torch.tensor([-0.25, 0.0, 1.0]))
    # random rays agree with NeRF's formula (moved from [-1, 1] to [0, 1])
    g = torch.Generator().manual_seed(0)
    o = torch.randn(50, 3, generator=g) * 0.3
    d = torch.randn(50, 3, generator=g) * 0.3 + torch.tensor([0.0, 0.0, -1.0])
    ndc = NDC(fx=40.0, fy=40.0, cx=32.0, cy=24.0, width=64, height=48, near=1.0, margin=0.0)
    q0, qd, t_far = ndc_rays(o, d, ndc)
    n_o, n_d = _nerf_ndc(48, 64, 40.0, 1.0, o, d)
    torch.testing.assert_close(q0, (n_o + 1) / 2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(qd * t_far[:, None], n_d / 2, atol=1e-5, rtol=1e-5)


def test_ndc_points_map_back_onto_the_world_ray():
    ndc = NDC(fx=30.0, fy=32.0, cx=20.0, cy=14.0, width=40, height=30, near=1.0, margin=0.1)
    o = torch.tensor([[0.1, -0.2, 0.05]])
    d = torch.tensor([[0.2, 0.1, -1.0]])
    d = d / d.norm()
    q0, qd, t_far = ndc_rays(o, d, ndc)
    for s in (0.0, 0.3, 0.9):
        p = ndc.from_cube(q0 + s * t_far[:, None] * qd)
        # p lies on the world ray: p - o is parallel to d, in front of the camera
        off = p - o
        assert float(torch.linalg.cross(off, d).norm()) < 1e-4 * max(1.0, float(off.norm()))
        assert float((off * d).sum()) > 0
    pts = torch.tensor([[0.3, -0.1, -2.0], [-1.0, 0.5, -7.0]])
    torch.testing.assert_close(ndc.from_cube(ndc.to_cube(pts)), pts, atol=1e-5, rtol=1e-5)


def test_cameras_subset_scale_and_transform():
    c2w = torch.stack([look_at([3.0, 0.0, 1.0]), look_at([0.0, 3.0, 1.0]), look_at([-3.0, 0.0, 1.0])])
    cams = Cameras(c2w, [100.0, 110.0, 120.0], 100.0, 50.0, 40.0, 100, 80)
    assert len(cams) == 3 and len(cams[1]) == 1 and len(cams[torch.tensor([0, 2])]) == 2
    assert cams[1:].fx.tolist() == [110.0, 120.0] and cams.size == (100, 80)
    half = cams.scaled(0.5)
    assert half.size == (50, 40) and half.fx.tolist() == [50.0, 55.0, 60.0] and float(half.cx[0]) == 25.0
    # the same ray through the same point of the picture at both resolutions
    _, d_full = camera_rays(cams, 0, torch.tensor([9.5]), torch.tensor([19.5]))  # image point (10, 20)
    _, d_half = camera_rays(half, 0, torch.tensor([4.5]), torch.tensor([9.5]))  # image point (5, 10)
    torch.testing.assert_close(d_full, d_half)
    # a similarity moves origins and turns directions; distances along rays scale
    norm = Normalization(0.25, (0.5, 0.4, 0.3), ((0.0, -1.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)))
    moved = norm.apply_cameras(cams)
    o0, d0 = camera_rays(cams, 1, torch.tensor([7]), torch.tensor([3]))
    o1, d1 = camera_rays(moved, 1, torch.tensor([7]), torch.tensor([3]))
    torch.testing.assert_close(o1, norm.apply(o0))
    torch.testing.assert_close(d1, d0 @ torch.tensor(norm.rotation).T)
    torch.testing.assert_close(norm.inverse(norm.apply(o0 + 2.0 * d0)), o0 + 2.0 * d0)
    torch.testing.assert_close(norm.apply(o0 + 2.0 * d0), o1 + 0.5 * d1)


def test_opencv_to_opengl_flips_y_and_z():
    c2w_cv = torch.cat([torch.eye(3), torch.tensor([[1.0], [2.0], [3.0]])], 1)
    gl = opencv_to_opengl(c2w_cv)
    assert gl[:, 1].tolist() == [0.0, -1.0, 0.0] and gl[:, 2].tolist() == [0.0, 0.0, -1.0]
    assert gl[:, 3].tolist() == [1.0, 2.0, 3.0]
