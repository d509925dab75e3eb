"""Corner proposals in torch: the end of the deployed graph (ONNX / TensorRT) and of the PyTorch backend.

From raw heads: sigmoid, 3x3 local-max suppression and the top-k corners of each type over C·H·W,
with their embeddings and offsets gathered. What leaves the GPU is a few KB per image; pairing and
soft-NMS run in the shared numpy decoder (``runtime/decode.py``), identically for every backend.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from runtime.names import PROPOSAL_OUTPUTS

from .corner_head import HEAD_OUTPUTS, HeadOutputs
from .detector import CornerNet


def local_maximum(heat: Tensor, kernel: int = 3) -> Tensor:
    """Zero every score that is not the max of its ``kernel x kernel`` window. ``[N, C, H, W]``."""
    hmax = F.max_pool2d(heat, kernel, stride=1, padding=(kernel - 1) // 2)
    return heat * (hmax == heat).to(heat.dtype)


def top_corners(heat: Tensor, emb: Tensor, off: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Top-k corners of one type.

    Args:
        heat: ``[N, C, H, W]`` scores after sigmoid and local-max suppression.
        emb: ``[N, 1, H, W]`` embeddings. off: ``[N, 2, H, W]`` offsets (x, y).
    Returns:
        scores ``[N, k]``, inds ``[N, k]`` (int64 flat ``c*H*W + y*W + x``), embs ``[N, k]``, offs ``[N, k, 2]``.
    """
    n, _, h, w = heat.shape
    scores, inds = heat.flatten(1).topk(k)
    pix = inds % (h * w)
    embs = emb.flatten(1).gather(1, pix)
    offs = off.flatten(2).gather(2, pix.unsqueeze(1).expand(n, 2, k)).transpose(1, 2)
    return scores, inds, embs, offs


class DeployModel(nn.Module):
    """CornerNet plus the proposal layer, as exported.

    ``outputs="proposals"`` returns the 8 tensors of :data:`PROPOSAL_OUTPUTS`;
    ``outputs="heads"`` the 6 raw head maps of :data:`HEAD_OUTPUTS` (for debugging and comparison).
    Input: normalised, padded images ``[N, 3, H, W]``.
    """

    def __init__(self, model: CornerNet, outputs: str = "proposals", k: int = 100, kernel: int = 3) -> None:
        super().__init__()
        if outputs not in ("proposals", "heads"):
            raise ValueError(f"outputs must be 'proposals' or 'heads', got {outputs!r}")
        self.model = model
        self.outputs = outputs
        self.k = k
        self.kernel = kernel

    @property
    def output_names(self) -> tuple[str, ...]:
        return PROPOSAL_OUTPUTS if self.outputs == "proposals" else HEAD_OUTPUTS

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        heads: HeadOutputs = self.model(images)
        if self.outputs == "heads":
            return tuple(heads)
        tl = top_corners(
            local_maximum(heads.tl_heat.sigmoid(), self.kernel), heads.tl_emb, heads.tl_off, self.k
        )
        br = top_corners(
            local_maximum(heads.br_heat.sigmoid(), self.kernel), heads.br_emb, heads.br_off, self.k
        )
        return (*tl, *br)
