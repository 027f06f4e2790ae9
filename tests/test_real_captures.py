"""Real captures through the backend, without Blender: the silhouettes stage of a fit
request (backend.segment.stage), the segment request, their messages, and soft targets.

Photos come from backend.segment.synthetic (the project's rasterizer over a backdrop,
true alpha known); the add-on sends images in linear light, so the tests do too.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import torch

from backend.core import messages
from backend.core.protocol import frame_chunks, read_frame, write_frame
from backend.fit.losses import hard_iou, silhouette_iou_loss
from backend.process.service import Service
from backend.segment.images import read_image
from backend.segment.stage import SilhouetteRequest, fit_views, segment_views
from backend.segment.synthetic import synthetic_views
from softras_blender.silhouettes import srgb_to_linear

SYNTHETIC_IOU = 0.9  # keyed masks against the true alpha (tests/test_segment.py measures)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0.5, b > 0.5
    return float((a & b).sum() / max(1, (a | b).sum()))


def as_views(synthetic, alpha: bool = False, masks=None) -> list[messages.View]:
    """messages.View per synthetic photo: linear RGBA, opaque unless `alpha` (then the true
    silhouette is the alpha); `masks`: per view mask or None."""
    views = []
    for k, s in enumerate(synthetic):
        rgba = np.ones(s.image.shape[:2] + (4,), np.float32)
        rgba[..., :3] = srgb_to_linear(s.image)
        if alpha:
            rgba[..., 3] = s.alpha
        views.append(messages.View(s.camera, rgba, s.name, held_out=k == 1,
                                   mask=None if masks is None else masks[k]))
    return views


@pytest.fixture(scope="module")
def dark_views():
    return synthetic_views("dark", count=8, seed=1)


# -- soft targets --------------------------------------------------------------------------


def test_the_silhouette_loss_accepts_fractional_targets():
    # A disc with a feathered edge (matting): target values 0, fractions, 1.
    ys, xs = np.mgrid[0:40, 0:40]
    r = np.hypot(xs - 20, ys - 20)
    target = torch.tensor(np.clip((12 - r) / 4 + 0.5, 0, 1), dtype=torch.float64)[None]
    assert ((target > 0.05) & (target < 0.95)).sum() > 50
    pred = torch.full_like(target, 0.5, requires_grad=True)
    loss = silhouette_iou_loss(pred, target)
    loss.backward()
    assert 0.0 < float(loss.detach()) < 1.0
    grad = pred.grad[0]
    # Descent raises the prediction where the target is object, lowers it on background.
    assert (grad[target[0] > 0.99] < 0).all() and (grad[target[0] < 0.01] > 0).all()
    # The soft target is closer to itself than to its hard (thresholded) version is.
    hard = (target > 0.5).double()
    assert silhouette_iou_loss(target, target) < silhouette_iou_loss(hard * 0.0 + 0.5, target)
    assert float(hard_iou(target, target)[0]) == 1.0


# -- the silhouettes stage -----------------------------------------------------------------


def test_auto_keys_opaque_photos_and_checks_the_views(dark_views):
    views = as_views(dark_views)
    outcome = segment_views(views, SilhouetteRequest("auto"))
    assert outcome.sources == ["key"] * len(views)
    assert outcome.checks is not None and not outcome.flagged()
    for mask, s in zip(outcome.masks, dark_views, strict=True):
        assert iou(mask, s.alpha) > SYNTHETIC_IOU
    report = outcome.report()
    assert report["flagged"] == [] and report["checked"]
    assert set(report["seconds"]) == {"segmentation", "consistency"}
    fitted = fit_views(views, outcome)
    assert [v.name for v in fitted] == [v.name for v in views]
    assert np.array_equal(fitted[0].image[..., 3], outcome.masks[0])
    assert np.array_equal(fitted[0].image[..., :3], views[0].image[..., :3])


def test_auto_takes_alpha_when_the_image_has_transparency(dark_views):
    views = as_views(dark_views, alpha=True)
    outcome = segment_views(views, SilhouetteRequest("auto"))
    assert outcome.sources == ["alpha"] * len(views) and outcome.checks is None
    assert "alpha" in outcome.check_note
    assert np.array_equal(outcome.masks[2], dark_views[2].alpha)


def test_given_masks_are_used_and_checked_not_refined(dark_views):
    masks = [s.alpha * 0.9 for s in dark_views]  # soft masks stay soft
    outcome = segment_views(as_views(dark_views, masks=masks), SilhouetteRequest("masks"))
    assert outcome.sources == ["mask"] * len(masks) and outcome.checks is not None
    assert np.array_equal(outcome.masks[3], masks[3])


@pytest.mark.parametrize("case, change, text", [
    ("no mask", lambda v: [None] * len(v), "no mask was given for this camera"),
    ("wrong size", lambda v: [np.ones((10, 10), np.float32)] * len(v),
     "its mask is 10x10 but the image is 160x120"),
    ("black mask", lambda v: [np.zeros(s.alpha.shape, np.float32) for s in v],
     "black everywhere"),
])
def test_bad_masks_name_the_view(dark_views, case, change, text):
    views = as_views(dark_views, masks=change(dark_views))
    with pytest.raises(ValueError, match=text):
        segment_views(views, SilhouetteRequest("masks"))


def test_a_photo_with_no_object_is_an_error(dark_views):
    views = as_views(dark_views)
    views[4].image[..., :3] = 0.001  # black: only backdrop
    with pytest.raises(ValueError, match="view04: no object found"):
        segment_views(views, SilhouetteRequest("key"))


def test_a_flagged_view_is_left_out_unless_kept(dark_views):
    views = as_views(dark_views)
    image = views[3].image
    views[3] = messages.View(views[3].camera, np.roll(image, 40, axis=1), "view03")
    outcome = segment_views(views, SilhouetteRequest("key"))
    assert [c.name for c in outcome.flagged()] == ["view03"]
    assert outcome.report()["flagged"][0]["reason"].startswith("view03:")
    assert "view03" not in [v.name for v in fit_views(views, outcome)]
    assert "view03" in [v.name for v in fit_views(views, outcome, keep_flagged=True)]


def test_learned_without_a_model_and_bad_settings_are_errors(dark_views):
    with pytest.raises(ValueError, match="needs a salient-object model"):
        segment_views(as_views(dark_views), SilhouetteRequest("learned"))
    with pytest.raises(ValueError, match="mode must be one of"):
        SilhouetteRequest.from_dict({"mode": "magic"})
    with pytest.raises(ValueError, match="unknown silhouettes settings: colour"):
        SilhouetteRequest.from_dict({"mode": "key", "colour": 1})


# -- messages ------------------------------------------------------------------------------


def test_segment_and_start_fit_carry_masks_and_silhouettes_over_the_wire(dark_views,
                                                                         tmp_path):
    masks = [s.alpha for s in dark_views]
    views = as_views(dark_views, masks=masks)
    settings = messages.silhouettes_settings("masks", keep_flagged=True)
    wire = tmp_path / "frames"
    with wire.open("wb") as out:
        for message in (messages.segment(3, views, settings),
                        messages.start_fit(4, None, None, views, {}, settings)):
            for chunk in frame_chunks(message):
                out.write(chunk)
    with wire.open("rb") as stream:
        segment = messages.parse_segment(read_frame(stream))
        start = messages.parse_start_fit(read_frame(stream))
    assert segment.fit_id == 3 and segment.silhouettes == settings
    assert start.silhouettes == settings
    assert np.array_equal(segment.views[2].mask, masks[2])
    assert np.array_equal(start.views[5].mask, masks[5])
    assert messages.parse_start_fit(messages.start_fit(1, None, None, views)).silhouettes is None


# -- the service ---------------------------------------------------------------------------


class Backend:
    """The real service (real fitting module) on two pipes, run on a thread."""

    def __init__(self):
        c2s_r, c2s_w = os.pipe()
        s2c_r, s2c_w = os.pipe()
        self.to_service = os.fdopen(c2s_w, "wb")
        self.from_service = os.fdopen(s2c_r, "rb")
        self.service = Service(os.fdopen(c2s_r, "rb"), os.fdopen(s2c_w, "wb"))
        self.thread = threading.Thread(target=self.service.run, daemon=True)
        self.thread.start()

    def request(self, message) -> list[dict]:
        """Send, then read until the job's last message; all messages but heartbeats."""
        write_frame(self.to_service, message)
        seen = []
        while True:
            reply = read_frame(self.from_service)
            assert reply is not None, seen
            if reply["type"] in ("heartbeat", "hello", "progress", "vertices"):
                continue
            seen.append(reply)
            if reply["type"] in ("done", "masks", "error"):
                return seen

    def close(self):
        self.to_service.close()
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def backend():
    b = Backend()
    yield b
    b.close()


def test_segment_request_answers_masks_with_stages(backend, dark_views):
    replies = backend.request(messages.segment(
        1, as_views(dark_views), messages.silhouettes_settings("auto")))
    stages = [r for r in replies if r["type"] == "stage"]
    masks = replies[-1]
    assert masks["type"] == "masks", replies[-1]
    assert [s["done"] for s in stages] == list(range(len(dark_views) + 1))
    assert stages[0]["stage"] == "silhouettes"
    assert masks["names"] == [s.name for s in dark_views]
    assert all(iou(m, s.alpha) > SYNTHETIC_IOU
               for m, s in zip(masks["masks"], dark_views, strict=True))
    assert masks["silhouettes"]["sources"]["view00"] == "key"


def test_a_fit_from_photos_reports_silhouettes_and_writes_a_contact_sheet(backend, dark_views,
                                                                          tmp_path):
    views = as_views(dark_views)
    views[3] = messages.View(views[3].camera, np.roll(views[3].image, 40, axis=1), "view03")
    sheet = tmp_path / "sheet.png"
    replies = backend.request(messages.start_fit(
        2, None, None, views, {"iterations": 5, "device": "cpu"},
        messages.silhouettes_settings("key", contact_sheet=str(sheet))))
    done = replies[-1]
    assert done["type"] == "done", done
    assert [f["name"] for f in done["silhouettes"]["flagged"]] == ["view03"]
    assert "view03" not in done["metrics"]["fit_iou"]
    assert set(done["metrics"]["heldout_iou"]) == {"view01"}
    photo = read_image(sheet)
    assert photo.shape[0] == 8 * 180 and photo.shape[1] == 3 * 240  # 8 rows of 3 tiles


def test_a_fit_where_no_photo_shows_an_object_is_refused(backend, dark_views):
    views = as_views(dark_views)
    for v in views:
        v.image[..., :3] = 0.001
    replies = backend.request(messages.start_fit(
        3, None, None, views, {"iterations": 5, "device": "cpu"},
        messages.silhouettes_settings("key")))
    assert replies[-1]["type"] == "error" and replies[-1]["kind"] == "fit"
    assert "no object found" in replies[-1]["message"]
