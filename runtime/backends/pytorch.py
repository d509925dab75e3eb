"""PyTorch backends: an in-memory ``CornerNet`` (training-time evaluation) or a ``.pth`` checkpoint
(ours or mmdet's), on CPU or CUDA. Both run :class:`trainer.model.proposals.DeployModel`, the graph
that is exported to ONNX."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime.errors import UserError
from runtime.meta import ModelMeta, sha256_file

from .base import Backend

AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@contextlib.contextmanager
def exact_fp32(enabled: bool) -> Iterator[None]:
    """No TF32 in cuDNN convolutions and cuBLAS matmuls while inside, restored on exit.

    The fp32 reference must be fp32; the switch is process-wide in PyTorch, so it is scoped to each
    inference call instead of being flipped for the whole process at construction.
    """
    if not enabled:
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class ModelBackend(Backend):
    """Runs an in-memory ``CornerNet`` through ``DeployModel``.

    Args:
        model: the network, already on ``device`` (its train/eval mode is the caller's business).
        meta: classes, normalisation and test settings.
        device: where ``model`` lives.
        amp_dtype: autocast dtype (``torch.bfloat16``/``float16``) or ``None`` for fp32.
        outputs: ``"proposals"`` (same graph as the exported ONNX) or ``"heads"``.
    """

    name = "pytorch"

    def __init__(
        self,
        model: torch.nn.Module,
        meta: ModelMeta,
        device: torch.device,
        amp_dtype: torch.dtype | None = None,
        outputs: str = "proposals",
    ) -> None:
        from trainer.model.proposals import DeployModel

        tc = meta.test_cfg
        self.meta = meta
        self.device = device
        self.amp_dtype = amp_dtype
        self.model = DeployModel(model, outputs, tc.corner_topk, tc.local_maximum_kernel)
        self.output_names = self.model.output_names
        precision = next(k for k, v in AUTOCAST_DTYPES.items() if v == amp_dtype)
        self.info: dict[str, Any] = {
            "checkpoint": None,
            "device": str(device),
            "precision": precision,
            "torch": torch.__version__,
        }

    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device, non_blocking=True)
        with (
            exact_fp32(self.device.type == "cuda" and self.amp_dtype is None),
            torch.inference_mode(),
            torch.autocast(
                self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
            ),
        ):
            outs = self.model(x)
        return {
            name: (t.float() if t.is_floating_point() else t).cpu().numpy()
            for name, t in zip(self.output_names, outs, strict=True)
        }


class PyTorchBackend(ModelBackend):
    """Runs a checkpoint file.

    Args:
        path: checkpoint file.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default CUDA when available.
        outputs: ``"proposals"`` (same graph as the exported ONNX) or ``"heads"``.
        dtype: ``"fp32"`` or ``"bf16"``/``"fp16"`` autocast on CUDA.
    """

    def __init__(
        self, path: str | Path, device: str | None = None, outputs: str = "proposals", dtype: str = "fp32"
    ) -> None:
        from trainer.checkpoint import build_model, load_checkpoint

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"--device {device}: no CUDA device is visible to PyTorch; use --device cpu")
        dev = torch.device(device)
        ckpt = load_checkpoint(path)
        super().__init__(build_model(ckpt, dev), ckpt.meta, dev, AUTOCAST_DTYPES[dtype], outputs)
        self.model.eval()
        self.info.update(
            {
                "checkpoint": str(path),
                "checkpoint_sha256": sha256_file(path),
                # the checkpoint is its own source: ``--verify`` without an argument compares with itself
                "source_checkpoint": str(path),
                "source_sha256": None,
                "checkpoint_source": ckpt.source,
            }
        )
