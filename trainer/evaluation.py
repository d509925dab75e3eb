"""COCO evaluation of the model being trained, through the runtime's own pipeline.

:class:`runtime.backends.pytorch.ModelBackend` runs the in-memory ``CornerNet``
(the same ``DeployModel`` graph the PyTorch backend and the exported ONNX run), so the numbers in
the training log are exactly what ``python -m runtime.eval epoch_N.pth`` reports for the saved
checkpoint: same pre-processing, batching by padded shape, decoding, soft-NMS and COCO scorer.

With several processes each evaluates every ``world_size``-th image and rank 0 scores the union.
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm import tqdm

from runtime.backends.pytorch import ModelBackend
from runtime.coco import CocoSet, check_classes, evaluate, to_coco_results
from runtime.detector import Detector
from runtime.meta import ModelMeta
from trainer.distributed import DistInfo
from trainer.model import CornerNet


def evaluate_model(
    model: CornerNet,
    meta: ModelMeta,
    coco: CocoSet,
    *,
    info: DistInfo | None = None,
    limit: int | None = None,
    batch: int = 1,
    flip: bool = False,
    workers: int = 2,
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> dict[str, float] | None:
    """The 12 COCO bbox stats (fractions 0-1) of ``model`` on ``coco``; ``None`` on ranks other than 0.

    Must be called on every process together (the results are gathered). The model is switched to
    eval mode for the duration and restored afterwards.

    Args:
        limit: the first ``limit`` images (sorted by id), as ``runtime.eval --limit``.
        batch, flip, workers: as ``runtime.eval --batch/--flip/--workers``.
    """
    info = info or DistInfo(device=next(model.parameters()).device)
    check_classes(coco, meta.classes, "the model being trained")
    images = coco.images[:limit] if limit else coco.images
    mine = images[info.rank :: info.world_size]
    backend = ModelBackend(model, meta, info.device, amp_dtype)
    results: list[dict[str, Any]] = []
    evaluated: list[int] = []
    ids = {str(im.path): im.id for im in mine}
    was_training = model.training
    model.eval()
    try:
        det = Detector(backend, flip=flip, batch_size=batch, workers=workers)
        with tqdm(
            total=len(mine), desc="eval", unit="img", disable=not (progress and info.is_main), leave=False
        ) as bar:
            for r in det.stream([im.path for im in mine]):
                key = ids[str(r.source)]
                results += to_coco_results(key, r.boxes, r.scores, r.labels, coco.category_ids)
                evaluated.append(key)
                bar.update(1)
    finally:
        model.train(was_training)
    gathered = info.all_gather_object((evaluated, results))
    if not info.is_main:
        return None
    all_ids = sorted(i for ids, _ in gathered for i in ids)
    all_results = [r for _, res in gathered for r in res]
    return evaluate(coco, all_results, image_ids=all_ids)
