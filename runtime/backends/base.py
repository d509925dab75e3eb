"""The one small interface every runtime backend implements.

A backend turns a batch of pre-processed images into named numpy outputs: either the 8 corner
proposals (``PROPOSAL_OUTPUTS``, the default for exported models) or the 6 raw heads
(``HEAD_OUTPUTS``). Everything before (pre-processing) and after (pairing, soft-NMS) is shared.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from runtime.meta import ModelMeta


class Backend(ABC):
    """Runs one model file. Subclasses set ``name``, ``meta``, ``output_names`` and ``info``."""

    name: str
    meta: ModelMeta
    output_names: tuple[str, ...]
    # Provenance for reports: source checkpoint path and sha256, versions, device, precision.
    info: dict[str, Any]

    @abstractmethod
    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """``images``: float32 ``[N, 3, H, W]``, normalised and padded. Returns outputs by name, batch first."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free device resources."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
