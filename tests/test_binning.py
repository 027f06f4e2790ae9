"""Which faces may touch which pixels and tiles: boxes, cells and per-tile lists."""

from __future__ import annotations

import math

import torch

from backend.render.binning import bin_faces, enumerate_cells, pixel_boxes, tile_size_for


def random_faces(count, width, height, seed=0):
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(count, 1, 2, generator=g) * torch.tensor([width, height]) * 1.4 - 0.2 * \
        torch.tensor([width, height])
    corners = centre + (torch.rand(count, 3, 2, generator=g) - 0.5) * 12
    return torch.cat([corners, torch.ones(count, 3, 1)], dim=-1)


def test_enumerate_cells_lists_every_cell_of_every_box_once():
    boxes = torch.tensor([[0, 2, 0, 1], [5, 4, 0, 3], [3, 3, 7, 7], [1, 2, 4, 3]])
    owner, x, y = enumerate_cells(boxes)
    cells = {(o, a, b) for o, a, b in zip(owner.tolist(), x.tolist(), y.tolist(), strict=True)}
    expected = {(0, a, b) for a in range(3) for b in range(2)} | {(2, 3, 7)}
    assert cells == expected and len(owner) == len(expected)


def test_pixel_boxes_hold_every_pixel_within_the_margin():
    faces = random_faces(50, 40, 30)
    margin = 1.7
    boxes = pixel_boxes(faces, margin, 40, 30)
    ys, xs = torch.meshgrid(torch.arange(30) + 0.5, torch.arange(40) + 0.5, indexing="ij")
    lo = faces[..., :2].amin(1)
    hi = faces[..., :2].amax(1)
    for f in range(len(faces)):
        near = (xs >= lo[f, 0] - margin) & (xs <= hi[f, 0] + margin) & \
               (ys >= lo[f, 1] - margin) & (ys <= hi[f, 1] + margin)
        x0, x1, y0, y1 = boxes[f].tolist()
        in_box = (xs - 0.5 >= x0) & (xs - 0.5 <= x1) & (ys - 0.5 >= y0) & (ys - 0.5 <= y1)
        assert torch.equal(near, in_box), f


def test_tile_lists_hold_exactly_the_faces_whose_boxes_touch_the_tile():
    width, height, tile, margin = 50, 34, 8, math.sqrt(0.5 * math.log(1e4 - 1))
    faces = torch.stack([random_faces(80, width, height, seed=s) for s in (1, 2)])
    valid = torch.rand(2, 80, generator=torch.Generator().manual_seed(5)) > 0.2
    offsets, listed = bin_faces(faces, valid, margin, width, height, tile)
    tiles_x, tiles_y = -(-width // tile), -(-height // tile)
    boxes = pixel_boxes(faces, margin, width, height)
    assert offsets[-1] == len(listed)
    for b in range(2):
        for ty in range(tiles_y):
            for tx in range(tiles_x):
                i = b * tiles_x * tiles_y + ty * tiles_x + tx
                got = listed[offsets[i]:offsets[i + 1]].tolist()
                x0, x1, y0, y1 = boxes[b].unbind(-1)
                touches = (x0 <= min(tx * tile + tile - 1, width - 1)) & (x1 >= tx * tile) & \
                          (y0 <= min(ty * tile + tile - 1, height - 1)) & (y1 >= ty * tile) & \
                          (x1 >= x0) & (y1 >= y0) & valid[b]
                assert got == touches.nonzero()[:, 0].tolist(), (b, tx, ty)


def test_tile_size_follows_the_image_size():
    assert [tile_size_for(s, s) for s in (32, 64, 65, 256, 300, 512, 1024, 4096)] == \
        [8, 8, 16, 16, 32, 32, 64, 64]
    assert tile_size_for(1024, 100) == 64
