"""The pycolmap stages of a solve, each run in a child process by `backend.sfm.solve`.

A stage is one long call into COLMAP's C++ code, which Python cannot interrupt; running
it in its own process lets a cancelled solve stop at once (the process is terminated).
Each stage reads and writes the COLMAP database (SQLite) in the work folder and sends
plain messages on a queue: ``("progress", fraction, message)``, then ``("done",
payload)`` or ``("error", message)``. Only this module imports pycolmap.
"""

from __future__ import annotations

import traceback

import numpy as np

MIN_FEATURES = 100  # fewer SIFT features than this: a photo too plain to match
MIN_INLIERS = 15  # COLMAP's default for a verified pair and for registration


def run_stage(stage: str, kwargs: dict, queue) -> None:
    """Child process entry: run ``stage`` with ``kwargs`` and report on ``queue``."""
    import pycolmap

    pycolmap.logging.minloglevel = 2  # errors only: COLMAP's INFO lines flood a console
    pycolmap.set_random_seed(0)

    def report(fraction: float, message: str) -> None:
        queue.put(("progress", float(fraction), message))

    try:
        payload = STAGE_FUNCTIONS[stage](pycolmap, report=report, **kwargs)
    except Exception as exc:  # sent to the parent, which raises it with the stage's name
        traceback.print_exc()
        queue.put(("error", f"{type(exc).__name__}: {exc}"))
        return
    queue.put(("done", payload))


def extract(pycolmap, *, database: str, image_dir: str, names: list[str], camera_model: str,
            shared_camera: bool, max_image_size: int, num_threads: int, report) -> int:
    """Import the photos (one shared camera, or one per photo) and extract SIFT features,
    a few photos per call so progress can be reported. Returns the photo count."""
    mode = pycolmap.CameraMode.SINGLE if shared_camera else pycolmap.CameraMode.PER_IMAGE
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = camera_model
    pycolmap.Database.open(database).close()  # creates the empty database
    pycolmap.import_images(database, image_dir, camera_mode=mode, image_names=names,
                           options=reader)
    options = pycolmap.FeatureExtractionOptions()
    options.num_threads = num_threads
    options.max_image_size = max_image_size
    chunk = max(1, len(names) // 10)
    for start in range(0, len(names), chunk):
        report(start / len(names), f"SIFT features of photo {start + 1} of {len(names)}")
        pycolmap.extract_features(database, image_dir, image_names=names[start:start + chunk],
                                  camera_mode=mode, camera_model=camera_model,
                                  reader_options=reader, extraction_options=options,
                                  device=pycolmap.Device.cpu)
    return len(names)


def match(pycolmap, *, database: str, ordering: str, overlap: int, num_threads: int,
          report) -> int:
    """Match features between pairs of photos and verify them geometrically: all pairs
    ("exhaustive") or each photo with the next ``overlap`` ("sequential"). Returns the
    number of verified pairs."""
    options = pycolmap.FeatureMatchingOptions()
    options.num_threads = num_threads
    report(0.0, f"{ordering} matching")
    if ordering == "exhaustive":
        pycolmap.match_exhaustive(database, matching_options=options, device=pycolmap.Device.cpu)
    else:
        pairing = pycolmap.SequentialPairingOptions()
        pairing.overlap = overlap
        pairing.quadratic_overlap = True
        pairing.loop_detection = False  # needs a vocabulary tree file
        pycolmap.match_sequential(database, matching_options=options, pairing_options=pairing,
                                  device=pycolmap.Device.cpu)
    db = pycolmap.Database.open(database)
    try:
        return db.num_verified_image_pairs()
    finally:
        db.close()


def mapping(pycolmap, *, database: str, image_dir: str, output: str, count: int,
            num_threads: int, report) -> dict:
    """Incremental mapping; returns the largest reconstruction as plain data (see
    `_reconstruction_data`) and, per photo it lacks, the reason (`_diagnose`)."""
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = num_threads
    options.min_model_size = 3
    registered = [0]

    def on_initial_pair() -> None:
        registered[0] = 2
        report(2 / count, "initial pair of photos")

    def on_next_image() -> None:
        registered[0] += 1
        report(min(registered[0], count) / count, f"{registered[0]} photos registered")

    models = pycolmap.incremental_mapping(database, image_dir, output, options=options,
                                          initial_image_pair_callback=on_initial_pair,
                                          next_image_callback=on_next_image)
    models = sorted(models.values(), key=lambda m: m.num_reg_images(), reverse=True)
    data = _reconstruction_data(models[0]) if models else None
    others = {model.images[i].name: model.num_reg_images() for model in models[1:]
              for i in model.reg_image_ids()}
    placed = set(data["names"]) if data else set()
    return {"model": data, "unregistered": _diagnose(pycolmap, database, placed, others)}


def _reconstruction_data(model) -> dict:
    """A pycolmap Reconstruction as plain data: names (N,), models (N,), intrinsics
    (N, 3, 3), poses (N, 3, 4) world -> camera, sizes (N, 2) width and height,
    observations (N,), points (P, 3) float64."""
    images = [model.images[i] for i in sorted(model.reg_image_ids())]
    cameras = [model.cameras[image.camera_id] for image in images]
    return {
        "names": [image.name for image in images],
        "models": [camera.model.name for camera in cameras],
        "intrinsics": np.array([camera.calibration_matrix() for camera in cameras]),
        "poses": np.array([image.cam_from_world().matrix() for image in images]),
        "sizes": np.array([(camera.width, camera.height) for camera in cameras]),
        "observations": np.array([image.num_points3D for image in images]),
        "points": np.array([p.xyz for p in model.points3D.values()]).reshape(-1, 3),
    }


def _diagnose(pycolmap, database: str, placed: set, others: dict) -> dict[str, str]:
    """Why each photo outside the largest model was left out, from the database."""
    db = pycolmap.Database.open(database)
    try:
        images = {image.image_id: image.name for image in db.read_all_images()}
        features = {name: db.num_keypoints_for_image(i) for i, name in images.items()}
        best = dict.fromkeys(images.values(), 0)
        partners = dict.fromkeys(images.values(), 0)
        for pair_id, geometry in zip(*db.read_two_view_geometries(), strict=True):
            inliers = len(geometry.inlier_matches)
            for image_id in pycolmap.pair_id_to_image_pair(pair_id):
                name = images[image_id]
                best[name] = max(best[name], inliers)
                partners[name] += inliers >= MIN_INLIERS
    finally:
        db.close()
    return {name: _reason(features[name], best[name], partners[name], others.get(name))
            for name in images.values() if name not in placed}


def _reason(features: int, best_inliers: int, partners: int, other_model: int | None) -> str:
    if features < MIN_FEATURES:
        return (f"only {features} SIFT features: the photo is blurred, dark or plain; retake "
                "it sharper, or with more texture in view")
    if partners == 0:
        return (f"no other photo shares enough features with it (best {best_inliers} "
                f"geometric matches, {MIN_INLIERS} needed): take photos closer together, "
                "about 10 to 20 degrees apart")
    if other_model is not None:
        return (f"it was placed only in a separate model ({other_model} photos) that could "
                "not be joined to the main one: add photos between the two groups")
    return (f"it matched {partners} photos but its pose could not be estimated reliably; "
            "photos closer together or with more texture help")


STAGE_FUNCTIONS = {"features": extract, "matching": match, "mapping": mapping}
