"""The salient-object model for silhouettes "Learned": where it is installed, and its download.

Standard library only, and runnable as a script, so the preferences' "Install Backend"
runs the download as one of its steps in its own process (never blocking Blender):

    python model_download.py URL SHA256 SIZE DESTINATION

The model is U2-Net's small variant (``u2netp.onnx``, 4.6 MB, Apache-2.0, by Xuebin Qin
et al.) as rembg publishes it. Its download is pinned by SHA-256 and size: a file that
does not match is removed and refused, so a changed or truncated download is never
used. The add-on downloads it only when Blender's online access is allowed; otherwise
the user names a model file in the panel (``--model`` headless).
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.request
from pathlib import Path

MODELS_FOLDER = "models"  # in the add-on's user folder
MODEL_FILE = "u2netp.onnx"
MODEL_URL = "https://github.com/danielgatis/rembg/releases/download/v0.0.0/u2netp.onnx"
# rembg pins this file by md5 8e83ca70e441ab06c318d82300c84806 (rembg/sessions/u2netp.py);
# its SHA-256 and size as recorded by projects that checked the download against that md5.
MODEL_SHA256 = "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8"
MODEL_SIZE = 4_574_861  # bytes
CHUNK = 1 << 16  # bytes read at a time
TIMEOUT = 60.0  # seconds without data before the download fails


class DownloadError(RuntimeError):
    """The download failed or its file does not match the pinned checksum; nothing was kept."""


def model_path(user_dir: str | os.PathLike) -> Path:
    """Where the installer puts the model in the add-on's user folder."""
    return Path(user_dir) / MODELS_FOLDER / MODEL_FILE


def installed_model(user_dir: str | os.PathLike) -> Path | None:
    """The installed model in the add-on's user folder, or None when it was not downloaded."""
    path = model_path(user_dir)
    return path if path.is_file() else None


def download(url: str, destination: str | os.PathLike, sha256: str, size: int | None = None
             ) -> Path:
    """Download ``url`` to ``destination`` (its folder created), checked against ``sha256``
    (hex) and ``size`` (bytes, None: any).

    The bytes go to a temporary file beside the destination, which replaces it only once
    they match, so a failed or wrong download leaves neither a partial file nor a changed
    one. Raises DownloadError saying what went wrong and what to do.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    try:
        digest, count = _fetch(url, partial)
        if size is not None and count != size:
            raise DownloadError(f"{url} gave {count} bytes, expected {size}: the download was "
                                "cut short or the file changed; try again later")
        if digest != sha256.lower():
            raise DownloadError(f"{url} does not match its pinned checksum (SHA-256 {digest}, "
                                f"expected {sha256}): the file changed or was corrupted, so "
                                "it is not used; name a model file yourself instead")
        os.replace(partial, destination)
    finally:
        partial.unlink(missing_ok=True)
    return destination


def _fetch(url: str, target: Path) -> tuple[str, int]:
    """Stream ``url`` into ``target``: (its SHA-256 hex digest, its size in bytes)."""
    digest, count = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response, \
                open(target, "wb") as out:
            while chunk := response.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
                count += len(chunk)
    except OSError as exc:  # URLError, HTTPError, timeouts and disk errors are all OSErrors
        raise DownloadError(f"could not download {url}: {exc}; check the network connection "
                            "and try again, or name a model file yourself") from exc
    return digest.hexdigest(), count


def main(argv: list[str]) -> int:
    """The installer's step: ``URL SHA256 SIZE DESTINATION``; 0 when the model is in place."""
    if len(argv) != 4:
        print("usage: model_download.py URL SHA256 SIZE DESTINATION", file=sys.stderr)
        return 2
    url, sha256, size, destination = argv
    try:
        path = download(url, destination, sha256, int(size))
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"downloaded {url} to {path} (SHA-256 checked)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
