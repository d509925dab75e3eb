"""Pictures for ``runtime.eval --verify --pictures DIR``: where a backend and PyTorch fp32 disagree most.

For each evaluated image the backend's detections are matched against PyTorch fp32's with the
project's rule (:func:`runtime.matching.match_detections`). Images are ranked by how many
detections found no partner on either side (``ref + test - 2 * matched``), then by the count
difference; the top K are written as side-by-side PNGs: PyTorch fp32 left, the backend right, both
drawn at the same score threshold with :func:`runtime.draw.draw_detections`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from runtime.decode import Detections
from runtime.draw import draw_detections, side_by_side
from runtime.errors import UserError
from runtime.image_io import read_image, write_image
from runtime.matching import match_detections

DEFAULT_COUNT = 4
DEFAULT_SCORE_THR = 0.3


@dataclass(frozen=True)
class ImageDifference:
    """How one image's detections differ between the reference and the backend (all scores)."""

    image_id: int
    matched: int
    ref_count: int
    test_count: int

    @property
    def unmatched(self) -> int:
        """Detections without a partner, reference side plus backend side."""
        return self.ref_count + self.test_count - 2 * self.matched

    @property
    def count_difference(self) -> int:
        return abs(self.test_count - self.ref_count)


def rank_differences(
    ref_dets: Mapping[int, Detections], dets: Mapping[int, Detections]
) -> list[ImageDifference]:
    """Images present in both mappings, largest difference first (ties by image id)."""
    diffs = []
    for image_id in sorted(set(ref_dets) & set(dets)):
        m = match_detections(ref_dets[image_id], dets[image_id])
        diffs.append(ImageDifference(image_id, m.matched, m.total_ref, m.total_test))
    return sorted(diffs, key=lambda d: (-d.unmatched, -d.count_difference, d.image_id))


def _safe_stem(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem) or "image"


def write_verify_pictures(
    out_dir: str | Path,
    image_paths: Mapping[int, Path],
    ref_dets: Mapping[int, Detections],
    dets: Mapping[int, Detections],
    classes: Sequence[str],
    backend_label: str,
    count: int = DEFAULT_COUNT,
    score_thr: float = DEFAULT_SCORE_THR,
) -> list[Path]:
    """Write side-by-side PNGs of the ``count`` images where ``dets`` differs most from ``ref_dets``.

    Args:
        out_dir: folder for the pictures (created); files are ``NN_<image stem>.png``, NN the rank.
        image_paths: image id -> image file (only ids in both detection mappings are considered).
        ref_dets: image id -> PyTorch fp32 detections (original image pixels).
        dets: image id -> the tested backend's detections.
        classes: class names by label.
        backend_label: right-hand title, e.g. ``"onnxruntime fp16"``.
        count: how many pictures, at most.
        score_thr: smallest score drawn, the same on both sides.

    Returns:
        The written files, worst image first.

    Raises:
        UserError: the folder or a picture cannot be written, or an image cannot be read again.
    """
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(
            f"{out_dir}: cannot create the --pictures folder ({e.strerror or e}); choose another"
        ) from None
    written = []
    for rank, diff in enumerate(rank_differences(ref_dets, dets)[:count], start=1):
        path = Path(image_paths[diff.image_id])
        image = read_image(path)
        ref, test = ref_dets[diff.image_id], dets[diff.image_id]
        n_ref = int((ref.scores >= score_thr).sum())
        n_test = int((test.scores >= score_thr).sum())
        picture = side_by_side(
            [
                (
                    f"PyTorch fp32: {n_ref} boxes >= {score_thr:g}",
                    draw_detections(image, ref, classes, score_thr),
                ),
                (
                    f"{backend_label}: {n_test} boxes >= {score_thr:g}, "
                    f"matched {diff.matched}/{diff.ref_count} (all scores)",
                    draw_detections(image, test, classes, score_thr),
                ),
            ]
        )
        target = out_dir / f"{rank:02d}_{_safe_stem(path)}.png"
        write_image(target, picture)
        written.append(target)
    return written
