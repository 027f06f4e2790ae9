"""Small Cycles fitting scenes for the end-to-end tests: `devtools.fit_targets`' targets
(the upright torus with its through-hole, the table with thin legs, ...) rendered by
Blender's Cycles from a dozen cameras at a small size, so a fit runs in seconds.

    views = cycles_views("torus")                # 12 fitting views + 4 held-out, 96x96
    start = fit_targets.start_mesh("cube")       # Blender's default cube
    result = fit(views, *start)

Needs bpy; import it after ``pytest.importorskip("bpy")``.
"""

from __future__ import annotations

from backend.core.camera import blender_camera
from backend.fit.fitting import View
from devtools import cycles_render as cycles
from devtools import fit_targets

SIZE = 96  # pixels, square: the table's legs are 3 px wide
FIT_ELEVATIONS = (-15.0, 40.0)
FIT_AZIMUTHS = 6
HELD_OUT = fit_targets.HELD_OUT[:4]
SAMPLES = 4  # Cycles samples per pixel: enough for a clean alpha at a 1.5 px filter


def cycles_views(target: str, size: int = SIZE) -> list[View]:
    """Cycles renders of ``target`` (a `fit_targets.TARGETS` name): 12 fitting views
    (2 elevations x 6 azimuths) then 4 held-out views, ``size`` x ``size`` RGBA each.

    Resets Blender's scene.
    """
    scene, obj = fit_targets.build_target(target)
    cycles.configure_cycles(scene, samples=SAMPLES, filter_width=fit_targets.CYCLES_FILTER,
                            max_bounces=0)
    vertices, _ = cycles.mesh_arrays(obj)
    rig = fit_targets.camera_rig(vertices, size, size, FIT_ELEVATIONS, FIT_AZIMUTHS, HELD_OUT)
    fitting = fit_targets.render_views(scene, rig.fitting)
    held = fit_targets.render_views(scene, rig.held_out)
    views = [View(blender_camera(**p), image, name=f"fit {i}")
             for i, (p, image) in enumerate(zip(rig.fitting, fitting, strict=True))]
    views += [View(blender_camera(**p), image, name=f"held-out {i}", held_out=True)
              for i, (p, image) in enumerate(zip(rig.held_out, held, strict=True))]
    return views
