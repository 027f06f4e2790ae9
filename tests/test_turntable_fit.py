"""A turntable rig fits as well as the same views placed by hand: Spot rendered by Cycles
from 8 cameras on a ring placed by hand (location on the ring, pointed at the centre
with mathutils), the renders then given to "Add Turntable Cameras" as its image folder;
both camera sets are fitted from the visual hull by the add-on's operator."""

from __future__ import annotations

import math

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")
import mathutils  # noqa: E402

from devtools import cycles_render as cycles  # noqa: E402
from devtools import demo  # noqa: E402

pytestmark = [pytest.mark.blender, pytest.mark.slow]

VIEWS, ELEVATION, DISTANCE, LENS = 8, 20.0, 4.0, 50.0
SIZE = (64, 48)


def hand_placed_cameras(scene) -> list:
    """Cameras on the ring, counter-clockwise from +X seen from above, each pointed at
    the origin: as a user would place them."""
    collection = bpy.data.collections.new("Hand")
    scene.collection.children.link(collection)
    cams = []
    for k in range(VIEWS):
        azimuth, elevation = 2 * math.pi * k / VIEWS, math.radians(ELEVATION)
        location = mathutils.Vector((math.cos(azimuth) * math.cos(elevation),
                                     math.sin(azimuth) * math.cos(elevation),
                                     math.sin(elevation))) * DISTANCE
        data = bpy.data.cameras.new(f"spot_{k:02d}")
        data.lens = LENS
        obj = bpy.data.objects.new(f"spot_{k:02d}", data)
        obj.location = location
        obj.rotation_euler = (-location).to_track_quat("-Z", "Y").to_euler()
        collection.objects.link(obj)
        cams.append(obj)
    bpy.context.view_layer.update()
    return cams


def fit_collection(scene, collection) -> dict:
    from softras_blender import runtime

    settings = scene.softras
    settings.mesh_source = "HULL"
    settings.camera_source = "COLLECTION"
    settings.camera_collection = collection
    settings.iterations, settings.resolution, settings.held_out_every = 40, 0, 4
    settings.silhouettes = "ALPHA"
    assert bpy.ops.softras.fit(device="CPU") == {"FINISHED"}
    return runtime.last_result()


def test_a_turntable_fits_as_well_as_hand_placed_cameras(addon, tmp_path):
    from softras_blender import camera_import

    scene = cycles.reset_scene()
    scene.render.resolution_x, scene.render.resolution_y = SIZE
    scene.render.resolution_percentage = 100
    cycles.configure_cycles(scene, samples=2, filter_width=1.0)
    spot = cycles.load_obj(cycles.spot_path())
    hand = hand_placed_cameras(scene)
    demo.render_cameras(scene, hand, tmp_path / "renders")
    bpy.data.objects.remove(spot)
    for cam in hand:
        slot = cam.data.background_images.new()
        slot.image = bpy.data.images.load(str(tmp_path / "renders" / f"{cam.name}.png"))
        cam.data.show_background_images = True

    turntable = camera_import.add_turntable(scene, camera_import.TurntableSpec(
        count=VIEWS, elevations_deg=[ELEVATION], distance=DISTANCE, lens=LENS,
        image_folder=str(tmp_path / "renders"), name="Turntable"))
    placed = sorted((o for o in turntable.objects if o.type == "CAMERA"), key=lambda o: o.name)
    assert len(placed) == VIEWS
    for by_hand, rig in zip(hand, placed, strict=True):
        assert np.allclose(np.array(by_hand.matrix_world), np.array(rig.matrix_world),
                           atol=1e-4)
        assert rig.data.background_images[0].image.filepath.endswith(f"{by_hand.name}.png")

    by_hand = fit_collection(scene, bpy.data.collections["Hand"])
    rig = fit_collection(scene, turntable)
    for result in (by_hand, rig):
        assert result["status"] == "done" and len(result["heldout_iou"]) == 2
    assert by_hand["mean_fit_iou"] > 0.85
    assert abs(rig["mean_fit_iou"] - by_hand["mean_fit_iou"]) < 0.01
    held_hand = np.mean(list(by_hand["heldout_iou"].values()))
    held_rig = np.mean(list(rig["heldout_iou"].values()))
    assert abs(held_rig - held_hand) < 0.01, (held_rig, held_hand)
