"""Inputs and comparisons shared by the CornerPool kernel tests (GPU, emulated on CPU) and TensorRT tests."""

from __future__ import annotations

import torch

from trainer.model.corner_pool import corner_pool as reference_corner_pool
from trt_plugins.fields import MODES

#: Small maps that reach every kernel path: 1x1, odd sizes, widths that are not multiples of 32 or of the vector
#: width. The GPU and emulated kernel tests add their own larger shapes.
SMALL_SHAPES = [
    (1, 1, 1, 1),
    (1, 1, 1, 37),
    (1, 1, 37, 1),
    (2, 3, 5, 7),
    (3, 1, 17, 8),  # W = 8: small lane groups, 16-byte packs of fp16
    (1, 2, 100, 12),  # fp16 W % 8 != 0 -> 4-byte packs
    (1, 4, 31, 33),
]

INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
# Bit patterns (as signed integers) of NaNs with different payloads and signs.
NANS = {
    torch.float32: [0x7FC00000, 0x7FC00001, -0x00400000],
    torch.float16: [0x7E00, 0x7E01, -0x0200],
    torch.bfloat16: [0x7FC0, 0x7FC1, -0x0040],
}


def make_input(
    shape: tuple[int, ...], dtype: torch.dtype, seed: int, specials: bool, device: str = "cuda"
) -> torch.Tensor:
    """Random values with many ties (small integers, +-0) and, with ``specials``, NaNs and +-inf."""
    generator = torch.Generator(device=device).manual_seed(seed)

    def uniform() -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=device)

    x = torch.randint(-4, 5, shape, generator=generator, device=device).to(dtype)
    x[uniform() < 0.3] *= -1  # turns some +0 into -0
    noise = torch.randn(shape, generator=generator, device=device).to(dtype)
    x = torch.where(uniform() < 0.5, noise, x)
    if specials:
        bits = x.view(INT_VIEW[dtype])
        pick = uniform()
        for index, nan in enumerate(NANS[dtype]):
            bits[(pick >= 0.002 * index) & (pick < 0.002 * (index + 1))] = nan
        x[(pick >= 0.01) & (pick < 0.013)] = float("inf")
        x[(pick >= 0.02) & (pick < 0.023)] = float("-inf")
    return x


def reference(x: torch.Tensor, mode: str) -> torch.Tensor:
    """The model's corner pooling: flip + torch.cummax + flip."""
    return reference_corner_pool(x, MODES[mode])


def assert_bitwise_equal(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    same = actual.view(INT_VIEW[actual.dtype]) == expected.view(INT_VIEW[expected.dtype])
    if not bool(same.all()):
        where = (~same).nonzero()[0].tolist()
        raise AssertionError(
            f"{what}: {int((~same).sum())} of {same.numel()} elements differ; first at {where}: "
            f"got {actual[tuple(where)].item()}, expected {expected[tuple(where)].item()}"
        )
