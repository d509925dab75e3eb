"""PyTorch backend for ``.pth`` checkpoints (ours or mmdet's), on CPU or CUDA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .base import Backend


class PyTorchBackend(Backend):
    """Runs a checkpoint through :class:`trainer.model.proposals.DeployModel`.

    Args:
        path: checkpoint file.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default CUDA when available.
        outputs: ``"proposals"`` (same graph as the exported ONNX) or ``"heads"``.
        dtype: ``"fp32"`` or ``"bf16"``/``"fp16"`` autocast on CUDA.
    """

    name = "pytorch"

    def __init__(
        self, path: str | Path, device: str | None = None, outputs: str = "proposals", dtype: str = "fp32"
    ) -> None:
        import torch

        from runtime.meta import sha256_file
        from trainer.checkpoint import build_model, load_checkpoint
        from trainer.model.proposals import DeployModel

        self._torch = torch
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            from runtime.errors import UserError

            raise UserError(f"--device {device}: no CUDA device is visible to PyTorch; use --device cpu")
        self.device = torch.device(device)
        if dtype == "fp32" and self.device.type == "cuda":
            # The fp32 reference must be fp32: cuDNN/cuBLAS would otherwise use TF32 for convolutions.
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        ckpt = load_checkpoint(path)
        self.meta = ckpt.meta
        tc = ckpt.meta.test_cfg
        self.model = DeployModel(
            build_model(ckpt, self.device), outputs, tc.corner_topk, tc.local_maximum_kernel
        ).eval()
        self.output_names = self.model.output_names
        self.autocast = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
        self.info: dict[str, Any] = {
            "checkpoint": str(path),
            "checkpoint_sha256": sha256_file(path),
            # the checkpoint is its own source: ``--verify`` without an argument compares with itself
            "source_checkpoint": str(path),
            "source_sha256": None,
            "checkpoint_source": ckpt.source,
            "device": str(self.device),
            "precision": dtype,
            "torch": torch.__version__,
        }

    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device, non_blocking=True)
        with (
            torch.inference_mode(),
            torch.autocast(
                self.device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None
            ),
        ):
            outs = self.model(x)
        return {
            name: t.float().cpu().numpy() if t.is_floating_point() else t.cpu().numpy()
            for name, t in zip(self.output_names, outs, strict=True)
        }
