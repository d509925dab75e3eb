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
    return decode_image(_read_bytes(path), str(path))


def decode_image(data: bytes | np.ndarray, where: str) -> np.ndarray:
    """Decode an encoded image (the bytes of a JPEG/PNG/... file) as :func:`read_image` does: ``(H, W, 3)`` uint8 RGB.

    ``where`` names the source in the error (a path, or e.g. ``"request input 'image'"`` when served).

    Raises:
        UserError: empty or undecodable bytes.
    """
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if buf.size == 0:
        raise UserError(f"{where}: image is empty (0 bytes); send the encoded file's bytes (JPEG, PNG, ...)")
    # IMREAD_COLOR is mmcv's 'color' flag: BGR, 8-bit, 3 channels whatever the file holds.
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None:
        raise UserError(
            f"{where}: not a decodable image (corrupt, truncated or not an image format OpenCV reads); "
            "re-export or remove the file"
        )
    return np.ascontiguousarray(bgr[:, :, ::-1])


# File suffixes OpenCV decodes; ``runtime.detect`` takes these from a folder and leaves other files alone.
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".avif"}
    | {".pbm", ".pgm", ".ppm", ".pnm", ".pxm", ".jp2", ".sr", ".ras", ".exr", ".hdr", ".pic"}
)


def quiet_decoder_logs() -> None:
    """Silence OpenCV's own log lines (e.g. ``[ERROR] grfmt_png.cpp ... IHDR chunk``) for this process.

    :func:`read_image` already reports an undecodable file in one line that names it; OpenCV's
    lines would only add noise. Command-line entry points call this; library code does not.
    """
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def write_image(path: str | os.PathLike[str], image_rgb: np.ndarray, jpeg_quality: int = 95) -> None:
    """Write an RGB image; the format follows the suffix (``.jpg``/``.jpeg`` JPEG, ``.png`` PNG, ...).

    Encodes in memory and writes the bytes, so non-ASCII paths work and failures raise instead of
    returning ``False`` as ``cv2.imwrite`` does.

    Args:
        path: output file; its folder must exist.
        image_rgb: ``(h, w, 3)`` uint8, RGB.
        jpeg_quality: 0-100, used for JPEG only.

    Raises:
        UserError: the suffix names no format OpenCV writes, or the file cannot be written.
    """
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if suffix in (".jpg", ".jpeg", ".jpe") else []
    try:
        ok, buf = cv2.imencode(suffix, np.ascontiguousarray(image_rgb[:, :, ::-1]), params)
    except cv2.error:
        ok = False
    if not ok:
        raise UserError(f"{path}: OpenCV cannot encode an image as '{suffix}'; use .png or .jpg")
    try:
        with open(path, "wb") as f:
            f.write(buf.tobytes())
    except OSError as e:
        raise UserError(
            f"{path}: cannot write the image ({e.strerror or e}); free disk space or choose another --out-dir"
        ) from None


def read_file_bytes(path: str | os.PathLike[str]) -> bytes:
    """An image file's bytes, undecoded (what a served model receives); missing/empty files raise ``UserError``."""
    return _read_bytes(path).tobytes()


def encode_png(image_rgb: np.ndarray) -> bytes:
    """Lossless PNG bytes of an ``(h, w, 3)`` uint8 RGB array; decoding them gives the same pixels back."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image_rgb[:, :, ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise UserError(f"cannot encode an image of shape {image_rgb.shape} as PNG")
    return buf.tobytes()
