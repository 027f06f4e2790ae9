"""What a structure-from-motion solve returns, and its errors.

numpy and backend.core only. Cameras are `backend.core.camera.CameraMatrices` (K in
pixels, OpenCV world -> camera pose), so a solved camera goes into Blender through
the same path as an imported COLMAP model (`backend.core.camera_files`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..core.camera import CameraMatrices
from ..core.camera_files import CameraRecord, write_colmap_text
from .alignment import Similarity

STAGES = ("features", "matching", "mapping")


class SfmError(ValueError):
    """Photos that cannot be solved, or a missing dependency; the message says what to do."""


class PycolmapMissing(SfmError):
    """The Python running the solve lacks pycolmap; the message gives the pip command."""


class SolveCancelled(Exception):
    """The caller's ``should_cancel`` asked the solve to stop.

    stage: the stage that was running; stage_seconds: the time spent per stage so far.
    """

    def __init__(self, stage: str, stage_seconds: dict[str, float]):
        self.stage, self.stage_seconds = stage, dict(stage_seconds)
        super().__init__(f"the camera solve was cancelled during {stage}; nothing was kept")


@dataclass(frozen=True)
class SolvedCamera:
    """One registered photo.

    name: the image's file name without its extension.
    image: the image file, relative to the solve's ``image_dir``, with '/' separators.
    camera: K (3, 3) and world -> camera pose (4, 4), OpenCV axes, the image's size.
    model: the COLMAP camera model solved for ("SIMPLE_PINHOLE" or "PINHOLE").
    observations: how many triangulated points the photo sees.
    """

    name: str
    image: str
    camera: CameraMatrices
    model: str
    observations: int

    @property
    def rotation(self) -> np.ndarray:
        """(3, 3) world -> camera rotation R (OpenCV axes)."""
        return self.camera.world_to_camera[:3, :3]

    @property
    def translation(self) -> np.ndarray:
        """(3,) world -> camera translation t: x_camera = R x_world + t."""
        return self.camera.world_to_camera[:3, 3]

    @property
    def intrinsics(self) -> dict:
        """fx, fy, cx, cy in pixels, width, height, model."""
        k = self.camera.intrinsics
        return {"fx": float(k[0, 0]), "fy": float(k[1, 1]), "cx": float(k[0, 2]),
                "cy": float(k[1, 2]), "width": self.camera.width, "height": self.camera.height,
                "model": self.model}


@dataclass(frozen=True)
class UnregisteredImage:
    """A photo the solve could not place, and why, in words a user can act on."""

    image: str
    reason: str


@dataclass(frozen=True)
class SolveResult:
    """Cameras for the photos of one folder, in one world frame.

    image_dir: the folder the image names are relative to.
    cameras: the registered photos, in the order they were given.
    unregistered: the photos left out, with reasons.
    points: (P, 3) float64 triangulated scene points in the same world frame.
    stage_seconds: wall time per stage ("features", "matching", "mapping").
    ordering: the matching used ("exhaustive" or "sequential").
    frame: how the world frame was chosen ("as solved", or what `normalise_scene` did).
    """

    image_dir: Path
    cameras: tuple[SolvedCamera, ...]
    unregistered: tuple[UnregisteredImage, ...]
    points: np.ndarray
    stage_seconds: dict[str, float]
    ordering: str
    frame: dict = field(default_factory=lambda: {"source": "as solved"})

    @property
    def registered(self) -> list[str]:
        return [camera.image for camera in self.cameras]

    def transformed(self, similarity: Similarity, frame: dict) -> SolveResult:
        """The same solution in the world ``similarity`` maps to; ``frame`` describes it."""
        cameras = tuple(
            replace(c, camera=replace(c.camera,
                                      world_to_camera=similarity.camera_pose(
                                          c.camera.world_to_camera)))
            for c in self.cameras)
        return replace(self, cameras=cameras, points=similarity.apply(self.points), frame=frame)

    def records(self) -> list[CameraRecord]:
        """The cameras as `CameraRecord`s (what the camera importers produce)."""
        return [CameraRecord(name=c.name, image=c.image, camera=c.camera) for c in self.cameras]


def write_colmap_model(result: SolveResult, folder) -> Path:
    """Write the solved cameras as a COLMAP text model (cameras.txt, images.txt, an empty
    points3D.txt) into ``folder``; image names are relative to ``result.image_dir``.
    Returns the folder. Read it back with `backend.core.camera_files.read_colmap`."""
    write_colmap_text(folder, result.records())
    return Path(folder)
