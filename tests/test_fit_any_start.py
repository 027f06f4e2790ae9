"""End to end (issue 9): a fit from Blender's default cube, or from the visual hull, of Cycles
renders of a torus (a through-hole) and a table (thin legs) reaches a held-out IoU and an
even, self-intersection-free surface.

Small images (96x96, 12 fitting views, 4 held-out; `tests/fit_targets.py`) keep the four
fits within the suite's budget. The thresholds come from benchmarks/bench_fit.py's figures
(docs/benchmarks.md, "Fit from any start") and these fits' own with adaptive topology. A
genus-0 start cannot open the torus' hole by remeshing (which keeps the genus): the fit
re-carves it from the visual hull (`backend.fit.recarve`) and says so.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("bpy")

from fit_targets import cycles_views  # noqa: E402

from backend.fit.adaptive import genus  # noqa: E402
from backend.fit.fitting import FitOptions, fit  # noqa: E402
from backend.fit.mesh_ops import check_mesh, edges  # noqa: E402
from backend.fit.quality import quality_stats  # noqa: E402
from devtools.cycles_render import mesh_arrays  # noqa: E402
from devtools.fit_targets import build_target, self_intersections, start_mesh  # noqa: E402

pytestmark = [pytest.mark.blender, pytest.mark.slow]

# Held-out IoU (our renderer, hard silhouettes) a fit must reach, whatever its start, and
# at least the carved visual hull's. Fixed topology, from the hull: torus 0.969 (hull
# 0.966), table 0.762 (hull 0.705: its legs are 3 px wide and the hull loses them); from
# the cube 0.517 and 0.425. The first adaptive fitter (topology "adapt"): torus 0.967
# from the hull, 0.877 from the cube; table 0.937 and 0.926. With the re-carve that opens
# the torus' hole (backend/fit/recarve.py): torus from the cube 0.971-0.974 (seeds 0, 1).
MIN_HELDOUT_IOU = {"torus": 0.955, "table": 0.90}
# An even surface: the 5th percentile of the per-triangle minimum angles (degrees), and no
# pair of triangles crossing each other. Today the hull start leaves 5th percentiles of
# 7.6 (torus) and 10.4 (table) degrees.
MIN_ANGLE_P5_DEG = 15.0
MAX_SELF_INTERSECTIONS = 0

@pytest.fixture(scope="module")
def fitted():
    """get(target, start) -> (the fit from that start, the carved hull unfitted: a fit of 0
    iterations), each computed once for the module."""
    views, hulls, results = {}, {}, {}

    def get(target: str, start: str):
        if target not in views:
            views[target] = cycles_views(target)
            hulls[target] = fit(views[target], options=FitOptions(iterations=0))
        if (target, start) not in results:
            mesh = start_mesh(start)
            vertices, faces = mesh if mesh is not None else (None, None)
            results[(target, start)] = fit(views[target], vertices, faces)
        return results[(target, start)], hulls[target]

    return get


@pytest.mark.parametrize(("start", "triangles"), [("cube", 12), ("uv_sphere", 960),
                                                  ("icosphere", 320)])
def test_starts_are_closed_meshes_at_the_origin_as_the_add_menu_makes_them(start, triangles):
    vertices, faces = start_mesh(start)
    assert faces.shape == (triangles, 3)
    report = check_mesh(faces)
    assert (report.boundary_edges, report.nonmanifold_edges, report.components) == (0, 0, 1)
    # Centred at the origin, radius 1 (the cube: size 2).
    np.testing.assert_allclose(vertices.max(axis=0) + vertices.min(axis=0), 0.0, atol=1e-6)
    assert np.abs(vertices).max() == pytest.approx(1.0, abs=1e-6)


def test_torus_has_a_through_hole_and_the_table_four_separate_legs():
    _, torus = build_target("torus")
    vertices, faces = mesh_arrays(torus)
    euler = len(vertices) - len(edges(faces)) + len(faces)
    assert euler == 0  # genus 1
    _, table = build_target("table")
    assert check_mesh(mesh_arrays(table)[1]).components == 5  # top and four legs


def test_self_intersections_counts_crossing_triangles_but_not_neighbours():
    vertices, faces = start_mesh("icosphere")
    assert self_intersections(vertices, faces) == 0  # neighbours touch, none cross
    crossing = np.array([[-1.0, 0.0, -1.0], [1.0, 0.0, -1.0], [0.0, 0.0, 1.0],
                         [0.0, -1.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 2.0]])
    assert self_intersections(crossing, np.array([[0, 1, 2], [3, 4, 5]])) == 1


def mean_heldout(result) -> float:
    return float(np.mean(list(result.heldout_iou.values())))


@pytest.mark.parametrize(("target", "start"), [
    pytest.param("torus", "cube"),
    pytest.param("torus", "hull"),
    pytest.param("table", "cube"),
    pytest.param("table", "hull"),
])
def test_fit_reaches_the_heldout_iou_from_any_start(fitted, target, start):
    result, hull = fitted(target, start)
    assert result.status == "done", result.message
    iou = mean_heldout(result)
    assert iou >= MIN_HELDOUT_IOU[target], result.message
    assert iou >= mean_heldout(hull), f"below the carved hull's {mean_heldout(hull):.3f}"


@pytest.mark.parametrize(("target", "start"), [
    pytest.param("torus", "cube"),
    pytest.param("torus", "hull"),
    pytest.param("table", "cube"),
    pytest.param("table", "hull"),
])
def test_fitted_surface_is_even_and_does_not_cross_itself(fitted, target, start):
    result, _ = fitted(target, start)
    stats = quality_stats(result.vertices, result.faces)
    assert stats["min_angle_p5"] >= MIN_ANGLE_P5_DEG, stats
    crossings = self_intersections(result.vertices, result.faces)
    assert crossings <= MAX_SELF_INTERSECTIONS


def test_a_genus_0_start_on_the_torus_is_re_carved_to_open_the_hole(fitted):
    result, _ = fitted("torus", "cube")
    assert genus(result.faces, len(result.vertices)) == 1
    assert "the silhouettes show 1 through-hole(s); the mesh was re-carved" in result.message
