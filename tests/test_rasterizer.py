"""The renderer's CPU path: gradients, agreement with the formulas, culling, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import icosphere, make_cameras

from backend.core.camera import blender_camera, look_at
from backend.render.binning import pixel_boxes
from backend.render.raster_cpu import count_pairs
from backend.render.renderer import (
    Cameras,
    Lighting,
    RenderSettings,
    project_faces,
    render,
    render_silhouette,
)

# Three triangles overlapping in depth and in the image, seen from +Z.
LAYERED_VERTICES = torch.tensor(
    [[-0.8, -0.6, 0.0], [0.7, -0.5, 0.0], [0.0, 0.8, 0.0],
     [-0.5, -0.7, 0.3], [0.8, -0.2, 0.35], [-0.2, 0.6, 0.25],
     [-0.9, 0.1, -0.3], [0.3, -0.9, -0.2], [0.5, 0.7, -0.25]], dtype=torch.float64)
LAYERED_FACES = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8]])


def front_camera(width=10, height=8, orthographic=False, dtype=torch.float64) -> Cameras:
    cam = blender_camera(matrix_world=look_at((0.1, -0.2, 3.0), (0, 0, 0), up=(0, 1, 0)),
                         resolution_x=width, resolution_y=height, lens=35.0,
                         camera_type="ORTHO" if orthographic else "PERSP", ortho_scale=2.5)
    return Cameras.from_matrices([cam], dtype=dtype)


def smooth_settings(**kw) -> RenderSettings:
    # Soft edges and a mild z-softmax keep finite differences well conditioned; a tiny
    # cutoff makes the culling jump far smaller than gradcheck's tolerance.
    base = dict(sigma=1.5, gamma=0.05, near=0.5, far=6.0, cutoff=1e-12,
                background_color=(0.2, 0.3, 0.4))
    base.update(kw)
    return RenderSettings(**base)


@pytest.mark.parametrize("orthographic", [False, True])
def test_gradcheck_colour_and_alpha_wrt_vertices_and_colours(orthographic):
    cams = front_camera(orthographic=orthographic)
    colors = torch.rand(9, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    v = LAYERED_VERTICES.clone().requires_grad_()
    c = colors.clone().requires_grad_()
    settings = smooth_settings()
    assert torch.autograd.gradcheck(
        lambda v, c: render(v, LAYERED_FACES, cams, c, settings, backend="cpu"),
        (v, c), eps=1e-6, atol=1e-5, rtol=1e-3)


def test_gradcheck_silhouette_wrt_vertices():
    cams = front_camera()
    v = LAYERED_VERTICES.clone().requires_grad_()
    settings = smooth_settings()
    assert torch.autograd.gradcheck(
        lambda v: render_silhouette(v, LAYERED_FACES, cams, settings, backend="cpu"),
        (v,), eps=1e-6, atol=1e-5, rtol=1e-3)


def test_gradcheck_with_lighting():
    cams = front_camera()
    v = LAYERED_VERTICES.clone().requires_grad_()
    c = torch.full((9, 3), 0.7, dtype=torch.float64, requires_grad=True)
    settings = smooth_settings(lighting=Lighting(direction=(0.3, -0.2, 1.0)))
    assert torch.autograd.gradcheck(
        lambda v, c: render(v, LAYERED_FACES, cams, c, settings, backend="cpu"),
        (v, c), eps=1e-6, atol=1e-5, rtol=1e-3)


def dense_reference(vertices, faces, cameras, colors, settings):
    """SoftRas written straight from the formulas: every pixel against every face.

    No boxes, no pairs; a face is dropped at a pixel exactly where D < cutoff.
    Returns (B, H, W, 4).
    """
    face_screen, valid = project_faces(vertices, faces, cameras, settings)
    B, H, W = len(cameras), cameras.height, cameras.width
    ys, xs = torch.meshgrid(torch.arange(H, dtype=vertices.dtype) + 0.5,
                            torch.arange(W, dtype=vertices.dtype) + 0.5, indexing="ij")
    p = torch.stack([xs, ys], -1).reshape(-1, 1, 1, 2)  # (HW, 1, 1, 2)
    images = []
    for b in range(B):
        tri = face_screen[b][None]  # (1, F, 3, 3)
        a, bb, c = tri[..., 0, :2], tri[..., 1, :2], tri[..., 2, :2]

        def edge(s, t):
            q = p[:, :, 0]
            return (t[..., 0] - s[..., 0]) * (q[..., 1] - s[..., 1]) - (
                t[..., 1] - s[..., 1]) * (q[..., 0] - s[..., 0])

        e = torch.stack([edge(bb, c), edge(c, a), edge(a, bb)], -1)  # (HW, F, 3)
        area = e.sum(-1, keepdim=True)
        inside = (e * area > 0).all(-1)
        seg_d2 = []
        for s, t in ((a, bb), (bb, c), (c, a)):
            d = t - s
            tt = (((p[:, :, 0] - s) * d).sum(-1) / (d * d).sum(-1)).clamp(0, 1)
            diff = p[:, :, 0] - (s + tt[..., None] * d)
            seg_d2.append((diff * diff).sum(-1))
        d2 = torch.stack(seg_d2, -1).min(-1).values
        prob = torch.sigmoid(torch.where(inside, d2, -d2) / settings.sigma)
        used = valid[b][None] & (prob >= settings.cutoff)
        prob = torch.where(used, prob, torch.zeros_like(prob))
        alpha = 1 - torch.prod(1 - prob, dim=-1)
        bary = (e / area).clamp_min(0)
        bary = bary / bary.sum(-1, keepdim=True)
        z = tri[..., 2]
        if bool(cameras.orthographic[b]):
            depth = (bary * z).sum(-1)
            beta = bary
        else:
            depth = 1 / (bary / z).sum(-1)
            beta = bary / z * depth[..., None]
        znorm = (settings.far - depth) / (settings.far - settings.near)
        face_colors = colors[faces]  # (F, 3, 3)
        col = (beta[..., None] * face_colors[None]).sum(-2)  # (HW, F, 3)
        logits = torch.where(used, znorm / settings.gamma, torch.full_like(znorm, -math.inf))
        eps_logit = torch.full_like(logits[:, :1], settings.background_depth / settings.gamma)
        all_logits = torch.cat([logits, eps_logit], -1)
        peak = all_logits.max(-1, keepdim=True).values.detach()
        weights = torch.cat([prob, torch.ones_like(prob[:, :1])], -1) * torch.exp(
            all_logits - peak)
        bg = torch.tensor(settings.background_color, dtype=vertices.dtype).expand(len(p), 1, 3)
        all_cols = torch.cat([col, bg], 1)
        rgb = (weights[..., None] * all_cols).sum(1) / weights.sum(-1, keepdim=True)
        images.append(torch.cat([rgb, alpha[:, None]], -1).reshape(H, W, 4))
    return torch.stack(images)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("orthographic", [False, True])
def test_cpu_matches_dense_formulas_on_random_triangles(seed, orthographic):
    g = torch.Generator().manual_seed(seed)
    n = 12
    v = (torch.rand(3 * n, 3, generator=g, dtype=torch.float64) - 0.5) * torch.tensor(
        [2.2, 1.8, 1.0], dtype=torch.float64)
    faces = torch.arange(3 * n).reshape(n, 3)
    colors = torch.rand(3 * n, 3, generator=g, dtype=torch.float64)
    cams = make_cameras(2, 24, 18, distance=3.0, orthographic=orthographic)
    settings = RenderSettings(sigma=0.8, gamma=0.02, near=0.5, far=8.0,
                              background_color=(0.1, 0.5, 0.9))
    v1, c1 = v.clone().requires_grad_(), colors.clone().requires_grad_()
    v2, c2 = v.clone().requires_grad_(), colors.clone().requires_grad_()
    fast = render(v1, faces, cams, c1, settings, backend="cpu")
    reference = dense_reference(v2, faces, cams, c2, settings)
    assert fast[..., 3].max() > 0.5, "the triangles should be visible"
    torch.testing.assert_close(fast, reference, atol=1e-10, rtol=1e-9)
    weights = torch.rand(fast.shape, generator=g, dtype=torch.float64)
    (fast * weights).sum().backward()
    (reference * weights).sum().backward()
    torch.testing.assert_close(v1.grad, v2.grad, atol=1e-8, rtol=1e-6)
    torch.testing.assert_close(c1.grad, c2.grad, atol=1e-8, rtol=1e-6)


def test_sigma_gives_the_same_edge_softness_in_pixels_at_any_resolution():
    # A big square seen head-on; its left edge crosses the image at the same
    # fraction of the width at both resolutions.
    v = torch.tensor([[-1.0, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], dtype=torch.float64)
    f = torch.tensor([[0, 1, 2], [0, 2, 3]])
    profiles = []
    for size in (40, 160):
        cam = blender_camera(matrix_world=look_at((0, 0, 5.0), (0, 0, 0), up=(0, 1, 0)),
                             resolution_x=size, resolution_y=size, camera_type="ORTHO",
                             ortho_scale=2.5)
        alpha = render_silhouette(v, f, Cameras.from_matrices([cam], dtype=torch.float64),
                                  RenderSettings(sigma=2.0))[0]
        row = alpha[size // 2]
        edge_px = size * (0.5 - 1.0 / 2.5)  # the square's left edge, in pixels
        centres = torch.arange(size, dtype=torch.float64) + 0.5
        profiles.append((centres - edge_px, row))
    # The alpha at the same signed pixel distance from the edge agrees.
    for offset in (-2.5, -1.5, -0.5, 0.5, 1.5):
        values = [row[torch.isclose(d, torch.tensor(offset, dtype=torch.float64))]
                  for d, row in profiles]
        assert all(len(x) == 1 for x in values)
        assert abs(values[0].item() - values[1].item()) < 1e-9
    d, row = profiles[0]
    assert row[torch.isclose(d, torch.tensor(-0.5, dtype=torch.float64))].item() == pytest.approx(
        1 / (1 + math.exp(0.25 / 2.0)))


def test_perspective_correct_colour_interpolation():
    # A long quad receding in depth, black at the near end and white at the far end:
    # perspective-correct interpolation makes the image midpoint darker than 0.5.
    v = torch.tensor([[-1.0, 0, -1], [1, 0, -1], [1, 10, -1], [-1, 10, -1]], dtype=torch.float64)
    f = torch.tensor([[0, 1, 2], [0, 2, 3]])
    colors = torch.tensor([[0.0] * 3, [0.0] * 3, [1.0] * 3, [1.0] * 3], dtype=torch.float64)
    cam = blender_camera(matrix_world=look_at((0, -1.0, 0.0), (0, 10, -1), up=(0, 0, 1)),
                         resolution_x=40, resolution_y=40, lens=20)
    cams = Cameras.from_matrices([cam], dtype=torch.float64)
    settings = RenderSettings(sigma=0.01, near=0.1, far=20)
    img = render(v, f, cams, colors, settings)[0]
    # Check one pixel against the exact ray/plane intersection.
    u, row = 20, 30
    k = torch.tensor(cam.intrinsics)
    ray_cam = torch.linalg.solve(k, torch.tensor([u + 0.5, row + 0.5, 1.0], dtype=torch.float64))
    cam_to_world = torch.linalg.inv(torch.tensor(cam.world_to_camera))
    direction = cam_to_world[:3, :3] @ ray_cam
    origin = cam_to_world[:3, 3]
    t = (-1.0 - origin[2]) / direction[2]
    hit = origin + t * direction
    expected = hit[1] / 10.0
    assert img[row, u, 3] > 0.99
    assert img[row, u, 0].item() == pytest.approx(expected.item(), abs=1e-9)


def test_nearer_face_wins_the_colour():
    v = torch.tensor([[-1.0, -1, 0], [1, -1, 0], [0, 1, 0],
                      [-1.0, -1, 0.5], [1, -1, 0.5], [0, 1, 0.5]], dtype=torch.float64)
    f = torch.tensor([[0, 1, 2], [3, 4, 5]])
    colors = torch.tensor([[1.0, 0, 0]] * 3 + [[0, 0, 1.0]] * 3, dtype=torch.float64)
    cams = Cameras.from_matrices([blender_camera(
        matrix_world=look_at((0, 0, 4.0), (0, 0, 0), up=(0, 1, 0)), resolution_x=16,
        resolution_y=16)], dtype=torch.float64)
    img = render(v, f, cams, colors, RenderSettings(sigma=0.1, gamma=1e-4, near=1, far=10))[0]
    centre = img[8, 8]
    assert centre[2] > 0.99 and centre[0] < 0.01  # blue, at z=0.5, is nearer the camera


def test_front_faces_only_hides_the_back_of_a_closed_mesh_but_not_its_silhouette():
    v, f = icosphere(2)
    cams = make_cameras(2, 32, 32)
    both = render_silhouette(v, f, cams, RenderSettings(sigma=0.2))
    front = render_silhouette(v, f, cams, RenderSettings(sigma=0.2, double_sided=False))
    assert (front <= both + 1e-12).all() and (front < both - 0.1).any()
    # Only rim pixels differ, where back faces add to the soft edge.
    assert ((front > 0.5) == (both > 0.5)).double().mean() > 0.97


def test_front_faces_only_skips_a_triangle_turned_away():
    v = torch.tensor([[-1.0, -1, 0], [1, -1, 0], [0, 1, 0]], dtype=torch.float64)
    facing = torch.tensor([[0, 1, 2]])  # counter-clockwise seen from +Z, where the camera is
    cams = front_camera(16, 16)
    one_sided = RenderSettings(sigma=0.2, double_sided=False)
    assert render_silhouette(v, facing, cams, one_sided).max() > 0.99
    assert render_silhouette(v, facing.flip(1), cams, one_sided).max() == 0
    assert render_silhouette(v, facing.flip(1), cams, RenderSettings(sigma=0.2)).max() > 0.99


def test_culling_is_exactly_the_cutoff():
    v = torch.tensor([[-1.0, -1, 0], [1, -1, 0], [0, 1, 0]], dtype=torch.float64)
    f = torch.tensor([[0, 1, 2]])
    cams = front_camera(48, 48)
    settings = RenderSettings(sigma=1.0, cutoff=1e-3)
    alpha = render_silhouette(v, f, cams, settings)
    loose = render_silhouette(v, f, cams, RenderSettings(sigma=1.0, cutoff=1e-300))
    nonzero = alpha > 0
    assert (alpha[nonzero] >= 1e-3 - 1e-15).all()
    assert ((loose >= 1e-3) == nonzero).all()


def test_empty_mesh_renders_background():
    cams = make_cameras(2, 8, 6)
    img = render(torch.zeros(0, 3, dtype=torch.float64), torch.zeros(0, 3, dtype=torch.long),
                 cams, settings=RenderSettings(background_color=(0.1, 0.2, 0.3)))
    assert img.shape == (2, 6, 8, 4)
    assert torch.all(img[..., 3] == 0)
    torch.testing.assert_close(img[0, 0, 0, :3], torch.tensor([0.1, 0.2, 0.3], dtype=img.dtype))


@pytest.mark.parametrize("bad, message", [
    (lambda v, f: (v.index_fill(0, torch.tensor([3]), math.nan), f), "NaN or infinite"),
    (lambda v, f: (v.index_fill(0, torch.tensor([0]), math.inf), f), "NaN or infinite"),
    (lambda v, f: (v, f + 1), "face indices must lie in"),
    (lambda v, f: (v, -f), "face indices must lie in"),
    (lambda v, f: (v, f[:, :2]), "triangulate"),
    (lambda v, f: (v[:, :2], f), "vertices must have shape"),
    (lambda v, f: (v, f.double()), "integer vertex indices"),
])
def test_bad_mesh_input_is_a_clear_value_error(bad, message):
    v, f = icosphere(0)
    v, f = bad(v, f)
    with pytest.raises(ValueError, match=message):
        render(v, f, make_cameras(1, 8, 8))


def test_zero_focal_length_is_a_clear_value_error():
    with pytest.raises(ValueError, match="focal length"):
        blender_camera(matrix_world=np.eye(4), resolution_x=8, resolution_y=8, lens=0.0)


def test_zero_area_faces_are_skipped_and_give_no_nan_gradients():
    v, f = icosphere(1)
    v = torch.cat([v, torch.tensor([[0.2, 0.2, 0.2], [0.2, 0.2, 0.2], [0.5, 0.5, 0.5]],
                                   dtype=v.dtype)])
    degenerate = torch.tensor([[len(v) - 3, len(v) - 2, len(v) - 1],  # two equal corners
                               [0, 0, 0]])
    f = torch.cat([f, degenerate])
    v = v.requires_grad_()
    c = torch.rand_like(v).requires_grad_()
    img = render(v, f, make_cameras(2, 24, 24), c, RenderSettings(sigma=0.5))
    img.sum().backward()
    assert torch.isfinite(img).all()
    assert torch.isfinite(v.grad).all() and torch.isfinite(c.grad).all()


def test_faces_behind_the_camera_are_skipped_without_nan():
    v, f = icosphere(1)
    cam = blender_camera(matrix_world=look_at((0, 0, 0.5), (0, 0, -3), up=(0, 1, 0)),
                         resolution_x=16, resolution_y=16)  # inside the sphere
    v = v.requires_grad_()
    settings = RenderSettings(sigma=0.5, near=0.1)
    alpha = render_silhouette(v, f, Cameras.from_matrices([cam], dtype=v.dtype), settings)
    alpha.sum().backward()
    assert torch.isfinite(alpha).all() and torch.isfinite(v.grad).all()
    # Faces with a corner behind the near plane are not rasterized at all.
    face_screen, valid = project_faces(v.detach(), f, Cameras.from_matrices([cam], v.dtype),
                                       settings)
    assert not valid[0][(face_screen[0, :, :, 2] < 0.1).any(-1)].any()


def test_any_aspect_ratio_renders_the_expected_shape():
    v, f = icosphere(1)
    for w, h in ((40, 12), (12, 40), (33, 17)):
        img = render(v, f, make_cameras(1, w, h))
        assert img.shape == (1, h, w, 4)
        assert img[..., 3].max() > 0.9


def test_cpu_render_and_gradients_are_bitwise_repeatable_with_several_threads():
    v, f = icosphere(3)
    cams = make_cameras(3, 48, 40, dtype=torch.float32)
    colors = torch.rand(v.shape, generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    try:
        runs = []
        for _ in range(3):
            vv = v.float().requires_grad_()
            cc = colors.clone().requires_grad_()
            out = render(vv, f, cams, cc, RenderSettings(sigma=0.5))
            (out * torch.linspace(0, 1, out.numel()).reshape(out.shape)).sum().backward()
            runs.append((out.detach(), vv.grad, cc.grad))
    finally:
        torch.set_num_threads(threads)
    for run in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], run, strict=True))


@pytest.mark.parametrize("sigma, cutoff", [(0.1, 1e-4), (2.0, 1e-3), (0.5, 1e-12)])
def test_pair_enumeration_holds_exactly_the_pairs_inside_the_cutoff(sigma, cutoff):
    # Random triangles, some partly outside the image: the pairs the CPU passes shade
    # are exactly those a dense test of every pixel against every face finds.
    g = torch.Generator().manual_seed(7)
    n, width, height = 40, 37, 29
    corners = torch.rand(n, 1, 2, generator=g, dtype=torch.float64) * torch.tensor(
        [width * 1.3, height * 1.3], dtype=torch.float64) - 4.0
    corners = corners + (torch.rand(n, 3, 2, generator=g, dtype=torch.float64) - 0.5) * 9.0
    face_screen = torch.cat([corners, torch.ones(n, 3, 1, dtype=torch.float64)], -1)[None]
    valid = torch.rand(1, n, generator=g) > 0.1
    settings = RenderSettings(sigma=sigma, cutoff=cutoff)
    candidates, kept = count_pairs(face_screen, valid, width, height, settings)

    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64) + 0.5,
                            torch.arange(width, dtype=torch.float64) + 0.5, indexing="ij")
    p = torch.stack([xs, ys], -1).reshape(-1, 1, 2)  # (HW, 1, 2)
    a, b, c = (face_screen[0, :, k, :2] for k in range(3))  # (F, 2) each
    edge_values = []
    for s, t in ((b, c), (c, a), (a, b)):
        edge_values.append((t[:, 0] - s[:, 0]) * (p[..., 1] - s[:, 1]) -
                           (t[:, 1] - s[:, 1]) * (p[..., 0] - s[:, 0]))
    e = torch.stack(edge_values, -1)  # (HW, F, 3)
    inside = (e * e.sum(-1, keepdim=True) > 0).all(-1)
    distances = []
    for s, t in ((a, b), (b, c), (c, a)):
        d = t - s
        along = (((p - s) * d).sum(-1) / (d * d).sum(-1)).clamp(0, 1)
        distances.append(((p - s - along[..., None] * d) ** 2).sum(-1))
    d2 = torch.stack(distances, -1).min(-1).values
    prob = torch.sigmoid(torch.where(inside, d2, -d2) / sigma)
    expected = int(((prob >= cutoff) & valid[0]).sum())
    boxes = pixel_boxes(face_screen, settings.cutoff_distance, width, height)[valid]
    box_cells = int(((boxes[:, 1] - boxes[:, 0] + 1).clamp_min(0) *
                     (boxes[:, 3] - boxes[:, 2] + 1).clamp_min(0)).sum())
    assert kept == expected > 0
    assert kept <= candidates <= box_cells
