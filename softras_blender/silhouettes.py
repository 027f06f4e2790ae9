"""Reference images -> fitting targets, in plain numpy (no bpy; unit-tested without Blender).

A target is an (H, W, 4) float32 RGBA array in [0, 1] at the camera's render size,
row 0 at the image top, colours in linear light with straight (not premultiplied)
alpha, and alpha the silhouette. Blender hands image pixels over as (h, w, 4) RGBA
with row 0 at the BOTTOM, 8-bit images still sRGB-encoded and float images
premultiplied; `target_from_pixels` undoes all of that and places the image in
the camera frame the way Blender draws a camera background image.
"""

from __future__ import annotations

import math

import numpy as np

FRAME_METHODS = ("STRETCH", "FIT", "CROP")

# Supersampling per render pixel when the image has more pixels than the render.
_MAX_SUPERSAMPLING = 8


def srgb_to_linear(values: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] -> linear light, float32, same shape."""
    c = np.asarray(values, dtype=np.float32)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(values: np.ndarray) -> np.ndarray:
    """Linear light -> sRGB-encoded values clipped to [0, 1], float32, same shape."""
    c = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055).astype(np.float32)


def decode_pixels(pixels: np.ndarray, *, srgb: bool, premultiplied: bool) -> np.ndarray:
    """Blender image pixels -> linear, straight-alpha RGBA (same (h, w, 4) layout), float32.

    srgb: the RGB values are sRGB-encoded (8-bit images in the sRGB colour space).
    premultiplied: RGB is multiplied by alpha (Blender's float buffers); divided out
    where alpha > 0.
    """
    rgba = np.array(pixels, dtype=np.float32)  # copy: the caller's array stays as it is
    if rgba.ndim != 3 or rgba.shape[2] != 4:
        raise ValueError(f"pixels must have shape (h, w, 4), got {rgba.shape}")
    if premultiplied:
        alpha = rgba[..., 3:4]
        rgba[..., :3] = np.where(alpha > 1e-6, rgba[..., :3] / np.maximum(alpha, 1e-6), 0.0)
    if srgb:
        rgba[..., :3] = srgb_to_linear(np.clip(rgba[..., :3], 0.0, 1.0))
    return np.clip(rgba, 0.0, 1.0)


def camera_frame_size(width: int, height: int, pixel_aspect=(1.0, 1.0),
                      sensor_fit: str = "AUTO") -> tuple[float, float]:
    """Blender's normalised camera frame (width, height): the fitted side is 1.

    Mirrors ``BKE_camera_view_frame``: the frame follows the render's aspect
    (pixel aspect included) and the sensor fit decides which side is 1.
    """
    aspx = width * float(pixel_aspect[0])
    aspy = height * float(pixel_aspect[1])
    fit = sensor_fit.upper()
    if fit == "AUTO":
        fit = "HORIZONTAL" if aspx >= aspy else "VERTICAL"
    if fit == "HORIZONTAL":
        return 1.0, aspy / aspx
    return aspx / aspy, 1.0


def frame_sample_points(
    image_size: tuple[int, int],
    render_size: tuple[int, int],
    *,
    pixel_aspect=(1.0, 1.0),
    sensor_fit: str = "AUTO",
    image_pixel_aspect=(1.0, 1.0),
    frame_method: str = "FIT",
    offset=(0.0, 0.0),
    scale: float = 1.0,
    rotation: float = 0.0,
    flip_x: bool = False,
    flip_y: bool = False,
    supersampling: int | tuple[int, int] = 1,
    sample_size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Where each render pixel (sub)sample lands in a camera background image.

    image_size, render_size: (width, height) in pixels; sample_size: the (W, H) pixel
    grid to sample, the render's own by default (a smaller grid over the same frame
    makes a downscaled target). The other arguments are the background image's
    settings in Blender (``frame_method``, ``offset``, ``scale``, ``rotation`` in
    radians, ``use_flip_x/y``), the image's display aspect, the scene's pixel aspect
    and the camera's sensor fit. Follows Blender's overlay drawing of camera
    background images (``image_camera_background_matrix_get``), including its odd
    offset units.

    Returns (x, y), each (H, W, sx*sy) float64 for the sample grid: image pixel
    coordinates with x right and y UP from the image's bottom-left corner (Blender's
    pixel row order), pixel i's centre at i + 0.5, for ``supersampling`` = (sx, sy)
    (or s for both) samples spread evenly over each target pixel.
    """
    iw, ih = image_size
    rw, rh = render_size
    method = frame_method.upper()
    if method not in FRAME_METHODS:
        raise ValueError(f"frame method must be one of {FRAME_METHODS}, got {frame_method!r}")
    if min(iw, ih, rw, rh) < 1:
        raise ValueError(f"empty image or render: image {iw}x{ih}, render {rw}x{rh}")
    if not scale > 0:
        raise ValueError(f"the background image's scale is {scale}: it must be positive")
    cam_w, cam_h = camera_frame_size(rw, rh, pixel_aspect, sensor_fit)
    rw, rh = sample_size or render_size
    cam_aspect = cam_w / cam_h
    image_aspect = (iw * float(image_pixel_aspect[0])) / (ih * float(image_pixel_aspect[1]))

    if method == "CROP":
        wide = image_aspect > cam_aspect
        base_w, base_h = ((cam_h * image_aspect, cam_h) if wide
                          else (cam_w, cam_w / image_aspect))
    elif method == "FIT":
        wide = image_aspect > cam_aspect
        base_w, base_h = ((cam_w, cam_w / image_aspect) if wide
                          else (cam_h * image_aspect, cam_h))
    else:
        base_w, base_h = cam_w, cam_h
    tx = offset[0] * min(1.0, cam_aspect)
    ty = offset[1] / (max(1.0, cam_aspect) * (image_aspect / cam_aspect))
    sx = base_w * 0.5 * scale * (-1.0 if flip_x else 1.0)
    sy = base_h * 0.5 * scale * (-1.0 if flip_y else 1.0)

    ssx, ssy = ((supersampling, supersampling) if np.isscalar(supersampling)
                else supersampling)
    ssx, ssy = int(ssx), int(ssy)
    px = (np.arange(rw)[:, None] + ((np.arange(ssx) + 0.5) / ssx)[None, :]).ravel()  # (W*sx,)
    py = (np.arange(rh)[:, None] + ((np.arange(ssy) + 0.5) / ssy)[None, :]).ravel()  # (H*sy,)
    fx = (px / rw - 0.5) * cam_w
    fy = (0.5 - py / rh) * cam_h
    fx, fy = np.meshgrid(fx, fy)  # (H*s, W*s)
    # Blender draws frame = T + Rz(-rotation) S quad; invert it.
    dx, dy = fx - tx, fy - ty
    c, si = math.cos(rotation), math.sin(rotation)
    qx = (c * dx - si * dy) / sx
    qy = (si * dx + c * dy) / sy
    x = (qx + 1.0) * 0.5 * iw
    y = (qy + 1.0) * 0.5 * ih

    def per_pixel(a):
        return a.reshape(rh, ssy, rw, ssx).transpose(0, 2, 1, 3).reshape(rh, rw, ssy * ssx)

    return per_pixel(x), per_pixel(y)


def _bilinear_clamped(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample (h, w, C) at pixel coordinates (centres at i + 0.5), clamping at the edges."""
    h, w = image.shape[:2]
    x = np.clip(x - 0.5, 0.0, w - 1.0)
    y = np.clip(y - 0.5, 0.0, h - 1.0)
    x0 = np.floor(x).astype(np.int64)
    y0 = np.floor(y).astype(np.int64)
    x1 = np.minimum(x0 + 1, w - 1)
    y1 = np.minimum(y0 + 1, h - 1)
    fx = (x - x0)[..., None]
    fy = (y - y0)[..., None]
    bottom = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    top = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return bottom * (1 - fy) + top * fy


def target_from_pixels(
    pixels: np.ndarray,
    render_size: tuple[int, int],
    *,
    srgb: bool,
    premultiplied: bool,
    name: str = "image",
    sample_size: tuple[int, int] | None = None,
    **framing,
) -> np.ndarray:
    """A Blender image's pixels -> the fitting target seen through the camera.

    pixels: (h, w, 4) RGBA float as ``image.pixels`` gives it (row 0 at the bottom).
    render_size: (W, H) of the camera's render; sample_size: the (W', H') of the
    target, the render size by default. srgb / premultiplied: see
    `decode_pixels`. framing: the keyword arguments of `frame_sample_points`
    (frame method, offset, scale, rotation, flips, aspects, sensor fit).

    Returns (H', W', 4) float32, row 0 at the top, linear straight-alpha RGBA.
    Raises ValueError naming ``name`` when the image does not cover the whole camera
    frame (for instance a FIT image of another aspect than the render), since the
    silhouette there would be unknown.
    """
    rgba = decode_pixels(pixels, srgb=srgb, premultiplied=premultiplied)
    h, w = rgba.shape[:2]
    rw, rh = sample_size or render_size
    # Enough samples per target pixel, along each of its axes, to average every image
    # pixel under it: as many as image pixels one target pixel step crosses.
    x, y = frame_sample_points((w, h), render_size, sample_size=(rw, rh), **framing)
    steps = []
    for axis in (1, 0):  # along target x, then target y
        if x.shape[axis] < 2:
            steps.append(1)
            continue
        dx = np.diff(x[..., 0], axis=axis).flat[0]
        dy = np.diff(y[..., 0], axis=axis).flat[0]
        crossed = math.hypot(dx, dy)
        steps.append(int(min(_MAX_SUPERSAMPLING, max(1, math.ceil(crossed - 1e-6)))))
    if steps != [1, 1]:
        x, y = frame_sample_points((w, h), render_size, supersampling=tuple(steps),
                                   sample_size=(rw, rh), **framing)
    centre_x, centre_y = x.mean(axis=2), y.mean(axis=2)
    eps = 1e-6 * max(w, h)
    outside = ((centre_x < -eps) | (centre_x > w + eps) | (centre_y < -eps) | (centre_y > h + eps))
    if np.any(outside):
        image_aspect = w / h
        render_aspect = render_size[0] / render_size[1]
        raise ValueError(
            f"{name} ({w}x{h}, aspect {image_aspect:.3f}) does not cover the whole camera frame "
            f"({render_size[0]}x{render_size[1]}, aspect {render_aspect:.3f}; "
            f"{int(outside.sum())} of {rw * rh} pixels uncovered "
            f"with frame method {framing.get('frame_method', 'FIT')}): use an image with the "
            "render's aspect ratio, or set the background image's frame method to Stretch or Crop"
        )
    samples = _bilinear_clamped(rgba, x, y)  # (H, W, s*s, 4)
    return np.ascontiguousarray(samples.mean(axis=2), dtype=np.float32)


def check_silhouette(target: np.ndarray, name: str = "image") -> None:
    """Raise ValueError when a target's alpha cannot be a silhouette.

    target: (H, W, 4). An all-opaque alpha usually means an image without an alpha
    channel (a JPEG, a render without a transparent film); an all-transparent one
    shows nothing to fit.
    """
    alpha = np.asarray(target)[..., 3]
    if not np.all(np.isfinite(alpha)):
        raise ValueError(f"{name} has NaN or infinite alpha values")
    if alpha.max() < 0.5:
        raise ValueError(
            f"{name} is transparent everywhere: its alpha (the silhouette) shows no object"
        )
    if alpha.min() > 0.5:
        raise ValueError(
            f"{name} is opaque everywhere, so its alpha gives no silhouette: use images with "
            "a transparent background (render with Film > Transparent and save PNG or EXR "
            "with RGBA)"
        )


def mask_from_rgba(rgba: np.ndarray) -> np.ndarray:
    """A mask image's target (H, W, 4) straight-alpha RGBA -> (H, W) float32 in [0, 1]:
    its luma (white = object) times its alpha (transparent counts as background)."""
    rgba = np.asarray(rgba, dtype=np.float32)
    luma = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.clip(luma * rgba[..., 3], 0.0, 1.0).astype(np.float32)
