"""Salient-object segmentation with a U2-Net-class ONNX model, run by onnxruntime.

The model is a file: one the user names (for example U2-Net's ``u2net.onnx``), else the
small ``u2netp.onnx`` that the add-on's "Install Backend" downloaded, checked against its
pinned SHA-256, into the add-on's user folder when Blender's online access is allowed
(``softras_blender/model_download.py``); the add-on sends its path. Nothing is downloaded
here. It takes a (1, 3, S, S) float32 image
normalised with ImageNet's mean and standard deviation (as U2-Net was trained) and
returns a saliency map (1, 1, S, S) as its first output; like U2-Net's reference
code, the map is rescaled to [0, 1] by its minimum and maximum, then resized to the
photo. The result stays soft (fractional at the edges).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# Input side for models whose input size is not fixed (U2-Net's training size).
DEFAULT_SIZE = 320


class SalientObjectModel:
    """A loaded model: `segment(rgb, name)` gives an (H, W) float32 mask in [0, 1]."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"no salient-object model at {path}: silhouettes 'learned' needs a "
                             "U2-Net-class ONNX file (e.g. u2netp.onnx); name one, or use "
                             "silhouettes 'key' or 'masks'")
        try:
            import onnxruntime
        except ImportError as exc:
            raise ValueError("silhouettes 'learned' needs onnxruntime: install the backend's "
                             "dependencies (pyproject.toml, extra 'backend')") from exc
        try:
            self.session = onnxruntime.InferenceSession(str(path),
                                                        providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ValueError(f"{path}: not an ONNX model onnxruntime can load ({exc})") from exc
        (model_input,) = self.session.get_inputs()[:1]
        shape = model_input.shape
        if len(shape) != 4 or shape[1] != 3:
            raise ValueError(f"{path}: the model's input is {shape}; a salient-object model "
                             "takes (1, 3, S, S) images")
        self.input_name = model_input.name
        fixed = [d for d in shape[2:] if isinstance(d, int)]
        self.size = (fixed[1], fixed[0]) if len(fixed) == 2 else (DEFAULT_SIZE, DEFAULT_SIZE)
        self.path = path

    def segment(self, rgb: np.ndarray, name: str) -> np.ndarray:
        """The object's soft mask (H, W) float32 in [0, 1] in `rgb` (H, W, 3|4) float in
        [0, 1]. Raises ValueError naming the photo when the model finds nothing salient."""
        h, w = rgb.shape[:2]
        small = cv2.resize(rgb[..., :3].astype(np.float32), self.size,
                           interpolation=cv2.INTER_AREA)
        batch = ((small - _MEAN) / _STD).transpose(2, 0, 1)[None].astype(np.float32)
        saliency = np.asarray(self.session.run(None, {self.input_name: batch})[0],
                              dtype=np.float32)
        if saliency.size != self.size[0] * self.size[1]:
            raise ValueError(f"{self.path}: the model's first output is {saliency.shape}; "
                             f"expected one map of {self.size[1]}x{self.size[0]}")
        saliency = saliency.reshape(self.size[1], self.size[0])
        low, high = float(saliency.min()), float(saliency.max())
        if high - low < 1e-6:
            raise ValueError(f"{name}: no object found (the salient-object model's map is flat)")
        saliency = (saliency - low) / (high - low)
        mask = np.clip(cv2.resize(saliency, (w, h), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)
        if not (mask > 0.5).any():
            raise ValueError(f"{name}: no object found by the salient-object model")
        return mask.astype(np.float32)
