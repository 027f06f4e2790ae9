"""The backend's silhouettes stage: a fit (or segment) request's views -> silhouettes.

The add-on sends each camera's image as it will be fitted (linear RGBA at the fit's
size) plus, when it has one, the camera's mask; `segment_views` finds one silhouette
per view by the request's mode (`sources.silhouette`), then runs the multi-view
consistency check (`consistency.check_views`), which may refine keyed masks and flags
views that disagree. `fit_views` puts the silhouettes into the views' alpha and
leaves the flagged views out (unless asked to keep them). `write_fit_sheet` writes
the report's contact sheet: photo | mask | outlines of the mask and the fitted mesh.

    request = SilhouetteRequest.from_dict({"mode": "auto"})
    outcome = segment_views(views, request)
    views = fit_views(views, outcome, request.keep_flagged)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..core.messages import View
from .consistency import ViewCheck, check_views
from .contact_sheet import write_contact_sheet
from .learned import SalientObjectModel
from .sources import MODES, Silhouette, has_transparency, silhouette

# Sources whose masks the consistency check may refine with GrabCut (computed here,
# not given by the user).
_COMPUTED = ("key", "learned")


@dataclass(frozen=True)
class SilhouetteRequest:
    """How to find the silhouettes (the `silhouettes` field of start_fit and segment).

    mode: one of `sources.MODES`. model: the ONNX model file for "learned".
    check: run the multi-view consistency check (skipped with fewer than 3 views, and
    when every silhouette is an image's alpha). keep_flagged: fit the views the check
    flags instead of leaving them out. contact_sheet: a PNG/JPEG path the backend
    writes after the fit (photo | mask | fitted outline), or None.
    """

    mode: str = "auto"
    model: str | None = None
    check: bool = True
    keep_flagged: bool = False
    contact_sheet: str | None = None

    @classmethod
    def from_dict(cls, data: dict) -> SilhouetteRequest:
        """ValueError naming an unknown field or a bad mode."""
        if not isinstance(data, dict):
            raise ValueError(f"silhouettes must be an object, got {type(data).__name__}")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown silhouettes settings: {', '.join(sorted(unknown))}")
        request = cls(**data)
        if request.mode not in MODES:
            raise ValueError(f"silhouettes mode must be one of {', '.join(MODES)}, "
                             f"got {request.mode!r}")
        return request


@dataclass
class SegmentOutcome:
    """masks: per view (H, W) float32 in [0, 1]; sources: per view "alpha", "mask", "key"
    or "learned"; photos: per view (H, W, 3) sRGB-encoded float32 (what was segmented);
    checks: per view `ViewCheck`, or None when the check did not run (`check_note` says
    why); seconds: {"segmentation", "consistency"}."""

    names: list[str]
    masks: list[np.ndarray]
    sources: list[str]
    photos: list[np.ndarray]
    checks: list[ViewCheck] | None
    check_note: str = ""
    seconds: dict = field(default_factory=dict)

    def flagged(self) -> list[ViewCheck]:
        return [c for c in self.checks or [] if c.flagged]

    def report(self) -> dict:
        """Plain data for done/masks messages and reports."""
        return {
            "sources": dict(zip(self.names, self.sources, strict=True)),
            "checked": self.checks is not None,
            "check_note": self.check_note,
            "flagged": [{"name": c.name, "reason": c.reason} for c in self.flagged()],
            "views": [{"name": c.name, "outside": c.outside, "coverage": c.coverage}
                      for c in self.checks or []],
            "seconds": dict(self.seconds),
        }


def linear_to_srgb(rgb: np.ndarray) -> np.ndarray:
    """Linear light in [0, 1] -> sRGB-encoded float32, same shape (the key and GrabCut
    are tuned on photos as stored in their files)."""
    c = np.clip(np.asarray(rgb, dtype=np.float32), 0.0, 1.0)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055).astype(np.float32)


def view_mode(mode: str, image: np.ndarray, mask: np.ndarray | None) -> str:
    """The mode for one view: "auto" is alpha when the image has transparency, masks when
    the view carries one, else key; other modes stay."""
    if mode != "auto":
        return mode
    if has_transparency(image):
        return "alpha"
    return "masks" if mask is not None else "key"


def view_silhouette(view: View, mode: str, model: SalientObjectModel | None):
    """`sources.Silhouette` of one view (its image sRGB-encoded for keying); ValueError
    naming the view when there is none."""
    photo = np.concatenate([linear_to_srgb(view.image[..., :3]), view.image[..., 3:]], axis=2)
    mode = view_mode(mode, photo, view.mask)
    if mode != "masks":
        return silhouette(photo, view.name, mode, model=model)
    if view.mask is None:
        raise ValueError(f"{view.name}: no mask was given for this camera (silhouettes "
                         "'masks' needs one per camera)")
    if view.mask.shape != photo.shape[:2]:
        raise ValueError(f"{view.name}: its mask is {view.mask.shape[1]}x{view.mask.shape[0]}"
                         f" but the image is {photo.shape[1]}x{photo.shape[0]}")
    if float(view.mask.max()) <= 0.0:
        raise ValueError(f"{view.name}: its mask is black everywhere (no object; white marks "
                         "the object)")
    return Silhouette(view.name, view.mask.astype(np.float32), "mask")


def segment_views(views: Sequence[View], request: SilhouetteRequest,
                  on_view: Callable[[int, int], None] | None = None) -> SegmentOutcome:
    """One silhouette per view, then the consistency check (see the module docstring).

    views: `messages.View` with linear RGBA images (and optional masks). on_view(k, n)
    is called after each view is segmented. Raises ValueError naming the view for a
    photo with no object, a missing or wrong-sized mask, or when every view is flagged.
    """
    start = time.perf_counter()
    model = None
    if request.mode == "learned":
        if not request.model:
            raise ValueError("silhouettes 'learned' needs a salient-object model file "
                             "(U2-Net-class ONNX): name one with --model or in the panel")
        model = SalientObjectModel(request.model)
    found = []
    for k, view in enumerate(views):
        found.append(view_silhouette(view, request.mode, model))
        if on_view is not None:
            on_view(k + 1, len(views))
    photos = [linear_to_srgb(v.image[..., :3]) for v in views]
    outcome = SegmentOutcome([v.name for v in views], [s.mask for s in found],
                             [s.source for s in found], photos, None)
    outcome.seconds["segmentation"] = time.perf_counter() - start
    start = time.perf_counter()
    _check(outcome, views, request)
    outcome.seconds["consistency"] = time.perf_counter() - start
    return outcome


def _check(outcome: SegmentOutcome, views: Sequence[View], request: SilhouetteRequest) -> None:
    """Run the consistency check into `outcome` when it applies; keyed (and learned)
    masks are refined by it, given ones (alpha, mask files) only judged."""
    if not request.check:
        outcome.check_note = "the multi-view check was turned off"
        return
    if all(s == "alpha" for s in outcome.sources):
        outcome.check_note = "every silhouette is an image's alpha: nothing to check"
        return
    if len(views) < 3:
        outcome.check_note = f"the multi-view check needs at least 3 views, got {len(views)}"
        return
    refine = all(s in _COMPUTED for s in outcome.sources)
    result = check_views([v.camera for v in views], outcome.masks, outcome.names,
                         outcome.photos if refine else None)
    outcome.masks = result.masks
    outcome.checks = result.checks


def fit_views(views: Sequence[View], outcome: SegmentOutcome, keep_flagged: bool = False
              ) -> list[View]:
    """The views with their silhouettes as alpha (colours kept); flagged views left out
    unless `keep_flagged`. ValueError when no view to fit is left."""
    flagged = {c.name for c in outcome.flagged()}
    kept = []
    for view, mask in zip(views, outcome.masks, strict=True):
        if view.name in flagged and not keep_flagged:
            continue
        image = view.image.copy()
        image[..., 3] = mask
        kept.append(replace(view, image=image, mask=None))
    if not any(not v.held_out for v in kept):
        raise ValueError("no view is left to fit once the flagged views are left out: "
                         + "; ".join(c.reason for c in outcome.flagged()))
    return kept


def fitted_silhouettes(vertices: np.ndarray, faces: np.ndarray, views: Sequence[View]
                       ) -> list[np.ndarray]:
    """The mesh's hard-edged silhouette (H, W) float32 in each view's camera.

    vertices: (V, 3) float; faces: (F, 3) int."""
    import torch

    from ..render.renderer import Cameras, render_silhouette
    from ..render.settings import RenderSettings

    v = torch.as_tensor(np.asarray(vertices), dtype=torch.float32)
    f = torch.as_tensor(np.asarray(faces), dtype=torch.int64)
    out = []
    with torch.no_grad():
        for view in views:
            cams = Cameras.from_matrices([view.camera])
            sil = render_silhouette(v, f, cams, RenderSettings(sigma=0.05))[0]
            out.append(sil.numpy().astype(np.float32))
    return out


def write_fit_sheet(path: str | Path, views: Sequence[View], outcome: SegmentOutcome,
                    vertices: np.ndarray, faces: np.ndarray) -> None:
    """The contact sheet at `path`: per view photo | mask | outlines (mask green, fitted
    mesh magenta), the names marked "(flagged)" or "(held out)"."""
    flagged = {c.name for c in outcome.flagged()}
    names = [v.name + (" (flagged)" if v.name in flagged else " (held out)" if v.held_out
                       else "") for v in views]
    fitted = fitted_silhouettes(vertices, faces, views)
    write_contact_sheet(path, outcome.photos, outcome.masks, fitted, names)
