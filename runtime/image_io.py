"""Image loading exactly as mmdet's ``LoadImageFromFile`` does it (cv2 backend), returned as RGB.

mmdet reads the file's bytes and decodes them with ``cv2.imdecode(buf, cv2.IMREAD_COLOR)``: always
3 channels in BGR order, alpha dropped, 16-bit scaled down to 8-bit, grayscale replicated, EXIF
orientation applied. Its data preprocessor then swaps to RGB. We do the same, so every backend sees
the pixels mmdet saw. Decoding the bytes (rather than ``cv2.imread(path)``) also makes non-ASCII
paths work on every platform.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from runtime.errors import UserError


def _read_bytes(path: str | os.PathLike[str]) -> np.ndarray:
    """The file's raw bytes as a 1-D uint8 array; unreadable files become a :class:`UserError`."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise UserError(f"{path}: image file not found; check the path (or --images DIR)") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, not an image file; pass an image file") from None
    except OSError as e:
        raise UserError(
            f"{path}: cannot read image file ({e.strerror or e}); check its permissions"
        ) from None
    if not data:
        raise UserError(f"{path}: image file is empty (0 bytes); replace it with a valid image")
    return np.frombuffer(data, dtype=np.uint8)


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as mmdet 3.x does and return it in RGB order.

    Args:
        path: image file (any format OpenCV decodes: JPEG, PNG, BMP, TIFF, WebP, ...).

    Returns:
        ``(H, W, 3)`` uint8 array, RGB, C-contiguous.

    Raises:
        UserError: missing, empty, unreadable or undecodable file (one line naming the file).
    """
    buf = _read_bytes(path)
    # IMREAD_COLOR is mmcv's 'color' flag: BGR, 8-bit, 3 channels whatever the file holds.
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None:
        raise UserError(
            f"{path}: not a decodable image (corrupt, truncated or not an image format OpenCV reads); "
            "re-export or remove the file"
        )
    return np.ascontiguousarray(bgr[:, :, ::-1])
