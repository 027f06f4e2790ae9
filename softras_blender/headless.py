"""Fit from the command line, without Blender's window: the add-on's operator in background mode.

    blender --background scene.blend --python softras_blender/headless.py -- [options]
    python softras_blender/headless.py -- --scene scene.blend [options]     # bpy module

Options (after ``--``): --scene, --object (omit to start from the visual hull),
--cameras (a collection name, or comma-separated camera names; default: every camera
with a reference image), --images DIR (one image per camera name; default: the
cameras' background images), --iterations, --resolution, --sharpness, --smoothness,
--device, --threads (the backend's CPU threads, 0: automatic), --fit-colors,
--refine-cameras (the refined cameras are saved with --output), --hold-out-every,
--backend-python, --output OUT.blend, --export-obj OUT.obj, --report report.json.

Real captures: --silhouettes auto|alpha|masks|key|learned (default auto), --masks DIR,
--model FILE.onnx (default: the one Install Backend downloaded), --keep-flagged,
--no-check, --contact-sheet OUT.png (photo | mask | fitted outline per camera).
--import FILE (a COLMAP model, transforms.json or Middlebury *_par.txt; --images DIR is
then where its images are; without --scene it starts from an empty scene) and
--turntable N (with --turntable-step, -start, -elevations, -distance, -lens, -centre,
-axis, -clockwise; images from --images in sorted order) add cameras first; --iterations
0 with --output only adds them and saves. --solve-cameras --images DIR (photos without
cameras; --solve-ordering, --solve-up or --solve-gravity, --known-distance) solves
their cameras by structure from motion (pycolmap, in the backend) and adds them the
same way.

The input .blend is never written: --output must name another file. Bad input exits
with status 2 and a one-line reason on stderr, a failed fit with status 1.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

# This script's add-on: the checkout's (or installed extension's) folder holding it.
ADDON_PARENT = str(Path(__file__).resolve().parent.parent)
if ADDON_PARENT not in sys.path:
    sys.path.insert(0, ADDON_PARENT)

from softras_blender.backend.core.options import DEVICES  # noqa: E402

EXIT_FIT_FAILED = 1
EXIT_BAD_INPUT = 2


class BadInput(Exception):
    """Exit with EXIT_BAD_INPUT and this one-line reason."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="headless.py", description="Fit a mesh to the cameras' reference images.")
    parser.add_argument("--scene", type=Path, help="the .blend file to open (needed when "
                        "Blender did not open one itself)")
    parser.add_argument("--object", help="the mesh object to fit (default: start from the "
                        "silhouettes, see --start)")
    parser.add_argument("--start", choices=("hull", "sphere"), default="hull",
                        help="without --object: start from the silhouettes' visual hull or "
                        "from a sphere over their bounding box (default: hull)")
    parser.add_argument("--align", action="store_true",
                        help="with --object: move and scale the mesh onto the silhouettes "
                        "before fitting")
    parser.add_argument("--keep-topology", action="store_true",
                        help="with --object: fit the mesh's vertices as a shape key instead "
                        "of adapting its triangles in a new object '<name> SoftRas Fit'")
    parser.add_argument("--cameras", help="a collection name, or comma-separated camera names "
                        "(default: every camera with a reference image)")
    parser.add_argument("--images", type=Path, help="folder with one image per camera, named "
                        "after it (default: the cameras' background images)")
    parser.add_argument("--iterations", type=int)
    parser.add_argument("--resolution", type=int, help="longest image side to fit at (0: full)")
    parser.add_argument("--sharpness", choices=("SOFT", "MEDIUM", "SHARP"))
    parser.add_argument("--smoothness", type=float)
    parser.add_argument("--device", choices=DEVICES, default=None)
    parser.add_argument("--threads", type=int, default=None,
                        help="the backend's CPU threads (0: automatic; default: preferences)")
    parser.add_argument("--fit-colors", action="store_true")
    parser.add_argument("--refine-cameras", action="store_true",
                        help="also correct each camera's pose; with --output the refined "
                             "cameras (flagged ones excepted) are saved")
    parser.add_argument("--hold-out-every", type=int, default=None,
                        help="hold out every n-th camera (measured, not fitted)")
    parser.add_argument("--backend-python", default="",
                        help="command line of the backend's Python (default: preferences)")
    parser.add_argument("--output", type=Path, help="save the fitted scene to this .blend")
    parser.add_argument("--export-obj", type=Path, help="export the fitted mesh to this .obj")
    parser.add_argument("--report", type=Path, help="write per-view IoU, loss history, timing "
                        "and device to this JSON file")
    add_capture_args(parser)
    add_solve_args(parser)
    return parser.parse_args(argv)


def add_capture_args(parser: argparse.ArgumentParser) -> None:
    """Options for real captures: silhouettes, camera files, turntables."""
    parser.add_argument("--silhouettes", choices=("auto", "alpha", "masks", "key", "learned"),
                        default="auto", help="how each image's silhouette is found "
                        "(default auto: alpha when transparent, else a mask, else key)")
    parser.add_argument("--masks", type=Path, help="folder with one mask per image, named "
                        "after it (white = object)")
    parser.add_argument("--model", type=Path, help="salient-object ONNX model (--silhouettes "
                        "learned; default: the u2netp.onnx that Install Backend downloaded)")
    parser.add_argument("--keep-flagged", action="store_true", help="fit the views the "
                        "multi-view check flags too (default: leave them out)")
    parser.add_argument("--no-check", action="store_true", help="skip the multi-view check")
    parser.add_argument("--contact-sheet", type=Path, help="write photo | mask | fitted "
                        "outline per camera to this .png")
    parser.add_argument("--import", dest="import_path", type=Path, help="camera file to import "
                        "(COLMAP model folder or file, transforms.json, Middlebury *_par.txt)")
    parser.add_argument("--turntable", type=int, help="add a turntable of N views per ring")
    parser.add_argument("--turntable-step", type=float, help="degrees between views")
    parser.add_argument("--turntable-start", type=float, default=0.0)
    parser.add_argument("--turntable-elevations", default="20",
                        help="degrees, comma-separated (one ring each)")
    parser.add_argument("--turntable-distance", type=float, default=5.0)
    parser.add_argument("--turntable-lens", type=float, default=50.0, help="focal length, mm")
    parser.add_argument("--turntable-centre", default="0,0,0", help="x,y,z")
    parser.add_argument("--turntable-axis", default="0,0,1", help="x,y,z")
    parser.add_argument("--turntable-clockwise", action="store_true")


def add_solve_args(parser: argparse.ArgumentParser) -> None:
    """Options for photos without cameras: solve them (structure from motion)."""
    parser.add_argument("--solve-cameras", action="store_true", help="solve the cameras of "
                        "the photos in --images (structure from motion) and add them")
    parser.add_argument("--solve-ordering", choices=("auto", "exhaustive", "sequential"),
                        default="auto", help="match every pair of photos, or each with the "
                        "next few in file order (default auto: every pair up to 60 photos)")
    parser.add_argument("--solve-up", choices=("auto", "ring", "camera"), default="auto",
                        help="up (+Z) from the camera ring's axis or the photos' own up")
    parser.add_argument("--solve-gravity", help="x,y,z: the direction gravity pulls in the "
                        "photos (x right, y up, z towards you; 0,-1,0 for upright photos), "
                        "instead of --solve-up")
    parser.add_argument("--known-distance", type=float, default=0.0,
                        help="the cameras' typical distance from the subject (sets the scale; "
                        "default: the subject about 1 unit in radius)")


def solve_cameras(args, scene):
    """--solve-cameras: the new collection of solved cameras (the add-on's Solve Cameras
    operator, run to the end). Any failure raises BadInput; the scene is then unchanged."""
    import bpy

    if args.images is None:
        raise BadInput("--solve-cameras needs --images DIR, the folder of photos")
    if args.import_path is not None or args.turntable is not None:
        raise BadInput("--solve-cameras finds the cameras itself: leave out --import and "
                       "--turntable")
    if args.known_distance < 0:
        raise BadInput(f"--known-distance {args.known_distance}: give a positive distance "
                       "(0: unit size)")
    gravity = None
    if args.solve_gravity is not None:
        if args.solve_up != "auto":
            raise BadInput("--solve-gravity sets which way is up: leave out --solve-up")
        gravity = vector(args.solve_gravity, "--solve-gravity")
    settings = scene.softras
    settings.solve_folder = str(args.images.resolve())
    settings.solve_ordering = args.solve_ordering.upper()
    settings.solve_up = args.solve_up.upper() if gravity is None else "GRAVITY"
    if gravity is not None:
        settings.solve_gravity = gravity
    settings.solve_distance = args.known_distance
    try:
        bpy.ops.softras.solve_cameras(backend_command=args.backend_python,
                                      threads=-1 if args.threads is None else args.threads)
    except RuntimeError as exc:  # the operator reported why; nothing was added
        raise BadInput(str(exc).strip().removeprefix("Error:").strip()) from exc
    return settings.camera_collection


def script_args(argv: list[str]) -> list[str]:
    """The arguments after ``--`` (Blender's own come before it)."""
    return argv[argv.index("--") + 1:] if "--" in argv else argv[1:]


def ensure_addon():
    """The add-on's runtime module (`runtime`), registering the add-on from this checkout
    if Blender has not loaded it already (as an installed extension)."""
    import bpy

    if not hasattr(bpy.types, "SOFTRAS_OT_fit"):
        import softras_blender

        softras_blender.register()
    package = sys.modules[bpy.types.SOFTRAS_OT_fit.__module__].__package__
    return importlib.import_module(package + ".runtime")


def open_scene(args) -> Path | None:
    """Open --scene (if given); returns the path of the scene being fitted, or None for
    the empty scene that --import or --turntable start from without --scene."""
    import bpy

    if args.scene is None and (args.import_path is not None or args.turntable is not None
                               or args.solve_cameras):
        bpy.ops.wm.read_factory_settings(use_empty=True)
        return None
    if args.scene is not None:
        path = args.scene.resolve()
        if not path.is_file() or path.suffix.lower() != ".blend":
            raise BadInput(f"--scene {args.scene}: no such .blend file")
        current = Path(bpy.data.filepath).resolve() if bpy.data.filepath else None
        if current != path:
            bpy.ops.wm.open_mainfile(filepath=str(path))
        return path
    if not bpy.data.filepath:
        raise BadInput("no scene: pass --scene scene.blend (or let Blender open one)")
    return Path(bpy.data.filepath).resolve()


def configure(args, scene) -> None:
    """Write the options into the scene's fit settings (``scene.softras``)."""
    import bpy

    settings = scene.softras
    if args.object is None:
        settings.mesh_source = "SPHERE" if args.start == "sphere" else "HULL"
    else:
        settings.align_mesh = args.align
        settings.keep_topology = args.keep_topology
        obj = scene.objects.get(args.object)
        if obj is None:
            raise BadInput(f"--object {args.object}: the scene has no object of that name")
        if obj.type != "MESH":
            raise BadInput(f"--object {args.object}: it is a {obj.type.lower()} object, "
                           "not a mesh")
        settings.mesh_source = "OBJECT"
        settings.target_object = obj
    if args.cameras:
        collection = bpy.data.collections.get(args.cameras)
        if collection is None:
            names = [n.strip() for n in args.cameras.split(",") if n.strip()]
            missing = [n for n in names if scene.objects.get(n) is None
                       or scene.objects[n].type != "CAMERA"]
            if missing:
                raise BadInput(f"--cameras: no collection {args.cameras!r} and no camera "
                               f"named {', '.join(missing)}")
            # An unlinked collection (not saved: nothing uses it) holding the chosen cameras.
            collection = bpy.data.collections.new("SoftRas headless cameras")
            for name in names:
                collection.objects.link(scene.objects[name])
        settings.camera_source = "COLLECTION"
        settings.camera_collection = collection
    if args.images is not None:
        if not args.images.is_dir():
            raise BadInput(f"--images {args.images}: no such folder")
        if args.import_path is None and args.turntable is None and not args.solve_cameras:
            # else the images belong to the added cameras
            settings.image_source = "FOLDER"
            settings.image_folder = str(args.images.resolve())
    configure_silhouettes(args, settings)
    for name in ("iterations", "resolution", "sharpness", "smoothness", "hold_out_every"):
        value = getattr(args, name)
        if value is not None:
            setattr(settings, "held_out_every" if name == "hold_out_every" else name, value)
    if args.fit_colors:
        settings.fit_colors = True
    if args.refine_cameras:
        settings.refine_cameras = True


def configure_silhouettes(args, settings) -> None:
    """--silhouettes, --masks, --model, --keep-flagged, --no-check into the settings."""
    settings.silhouettes = args.silhouettes.upper()
    if args.masks is not None:
        if not args.masks.is_dir():
            raise BadInput(f"--masks {args.masks}: no such folder")
        settings.mask_folder = str(args.masks.resolve())
    elif args.silhouettes == "masks" and not _cameras_name_masks(args):
        raise BadInput("--silhouettes masks needs --masks DIR (or a transforms.json with "
                       "mask_path)")
    if args.model is not None:
        if not args.model.is_file():
            raise BadInput(f"--model {args.model}: no such file")
        settings.model_path = str(args.model.resolve())
    settings.keep_flagged = args.keep_flagged
    settings.check_views = not args.no_check


def _cameras_name_masks(args) -> bool:
    """True when the imported camera file can name each camera's mask (transforms.json)."""
    return args.import_path is not None and args.import_path.suffix.lower() == ".json"


def add_cameras(args, scene):
    """--import, --turntable and --solve-cameras: the new camera collection, or None when
    none is given. Bad input raises BadInput and leaves the scene as it was."""
    from softras_blender import camera_import
    from softras_blender.backend.core.camera_files import CameraFileError

    if args.solve_cameras:
        return solve_cameras(args, scene)
    try:
        if args.import_path is not None:
            images = str(args.images.resolve()) if args.images else None
            return camera_import.import_cameras(scene, args.import_path.resolve(), images)
        if args.turntable is not None:
            return camera_import.add_turntable(scene, turntable_spec(args))
    except (CameraFileError, camera_import.CameraImportError) as exc:
        raise BadInput(str(exc)) from exc
    return None


def vector(text: str, option: str) -> tuple[float, float, float]:
    """An option's "x,y,z" as three floats; BadInput naming the option otherwise."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise BadInput(f"{option} {text}: give three numbers x,y,z")
    return values


def turntable_spec(args):
    """The `camera_import.TurntableSpec` of the --turntable options."""
    from softras_blender import camera_import

    try:
        elevations = camera_import.parse_angles(args.turntable_elevations)
    except camera_import.CameraImportError as exc:
        raise BadInput(f"--turntable-elevations: {exc}") from exc
    return camera_import.TurntableSpec(
        count=args.turntable, step_deg=args.turntable_step, start_deg=args.turntable_start,
        elevations_deg=elevations, distance=args.turntable_distance, lens=args.turntable_lens,
        centre=vector(args.turntable_centre, "--turntable-centre"),
        axis=vector(args.turntable_axis, "--turntable-axis"),
        clockwise=args.turntable_clockwise,
        image_folder=str(args.images.resolve()) if args.images else "")


def check_outputs(args, scene_path: Path | None) -> None:
    for option, path, suffix in (("--output", args.output, ".blend"),
                                 ("--export-obj", args.export_obj, ".obj"),
                                 ("--report", args.report, ".json"),
                                 ("--contact-sheet", args.contact_sheet, ".png")):
        if path is None:
            continue
        if path.suffix.lower() != suffix:
            raise BadInput(f"{option} {path}: the file name must end in {suffix}")
        if scene_path is not None and path.resolve() == scene_path:
            raise BadInput(f"{option} {path} is the input scene: the input is never "
                           "overwritten, pick another file")
        if not path.resolve().parent.is_dir():
            raise BadInput(f"{option} {path}: the folder {path.parent} does not exist")


def export_obj(path: Path, obj_name: str) -> None:
    import bpy

    obj = bpy.data.objects[obj_name]
    for other in bpy.context.view_layer.objects:
        other.select_set(False)
    obj.select_set(True)
    bpy.context.view_layer.objects.active = obj
    bpy.ops.wm.obj_export(filepath=str(path), export_selected_objects=True,
                          export_materials=False, export_colors=True, apply_modifiers=True)


def run(argv: list[str]) -> int:
    args = parse_args(script_args(argv))
    import bpy

    if args.threads is not None and args.threads < 0:
        raise BadInput(f"--threads {args.threads}: give 0 (automatic) or a positive count")
    scene_path = open_scene(args)
    check_outputs(args, scene_path)
    if args.iterations is not None and args.iterations < 0:
        raise BadInput(f"--iterations {args.iterations}: give a positive count (0 with "
                       "--import, --turntable or --solve-cameras: only add the cameras)")
    runtime = ensure_addon()
    scene = bpy.context.scene
    configure(args, scene)
    started = time.perf_counter()
    collection = add_cameras(args, scene)
    import_seconds = time.perf_counter() - started
    if collection is not None and not args.cameras:
        scene.softras.camera_source = "COLLECTION"
        scene.softras.camera_collection = collection
    if args.iterations == 0:
        return save_cameras_only(args, collection)
    if args.object is not None:
        bpy.context.view_layer.objects.active = scene.objects[args.object]
    device = args.device.upper() if args.device else "PREFERENCES"
    threads = -1 if args.threads is None else args.threads
    sheet = str(args.contact_sheet.resolve()) if args.contact_sheet else ""
    try:
        bpy.ops.softras.fit(device=device, backend_command=args.backend_python, threads=threads,
                            contact_sheet=sheet)
    except RuntimeError as exc:
        # The operator reported an error (bad scene or failed fit); the scene is restored.
        reason = str(exc).strip().removeprefix("Error:").strip()
        failed = runtime.last_outcome() is runtime.Outcome.FAILED
        return _fail(reason, EXIT_FIT_FAILED if failed else EXIT_BAD_INPUT)
    result = runtime.last_result()
    if runtime.last_outcome() is not runtime.Outcome.FITTED:
        return _fail(f"the fit ended with status {result and result.get('status')!r}",
                     EXIT_FIT_FAILED)
    if args.output is not None:
        if result.get("camera_corrections"):
            bpy.ops.softras.apply_refined_cameras()
        bpy.ops.wm.save_as_mainfile(filepath=str(args.output.resolve()), copy=True)
    if args.export_obj is not None:
        export_obj(args.export_obj, result["object"])
    if args.report is not None:
        report = {"scene": str(scene_path) if scene_path else None,
                  "import_seconds": import_seconds if collection is not None else None,
                  "contact_sheet": sheet or None,
                  "output": str(args.output) if args.output else None,
                  "export_obj": str(args.export_obj) if args.export_obj else None,
                  **result}
        args.report.write_text(json.dumps(report, indent=1, default=_plain), encoding="utf-8")
    print(f"SoftRas: {result['status']}: mean IoU {result.get('mean_fit_iou', float('nan')):.4f}"
          f" on {len(result['views'])} views in {result['wall_seconds']:.1f} s", flush=True)
    return 0


def save_cameras_only(args, collection) -> int:
    """--iterations 0: save the scene with the added cameras to --output, fit nothing."""
    import bpy

    if collection is None:
        raise BadInput("--iterations 0 only adds cameras: give --import, --turntable or "
                       "--solve-cameras")
    if args.output is None:
        raise BadInput("--iterations 0 only adds cameras: give --output OUT.blend to save them")
    bpy.ops.wm.save_as_mainfile(filepath=str(args.output.resolve()), copy=True)
    cameras = [o for o in collection.all_objects if o.type == "CAMERA"]
    print(f"SoftRas: added {len(cameras)} cameras in {collection.name!r}; saved "
          f"{args.output}", flush=True)
    return 0


def _plain(value):
    """JSON for numpy scalars and arrays in the report."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _fail(reason: str, code: int) -> int:
    print(f"softras headless: error: {reason.splitlines()[0] if reason else 'unknown'}",
          file=sys.stderr, flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    try:
        return run(sys.argv if argv is None else argv)
    except BadInput as exc:
        return _fail(str(exc), EXIT_BAD_INPUT)


if __name__ == "__main__":
    sys.exit(main())
