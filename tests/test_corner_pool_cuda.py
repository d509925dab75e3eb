"""The CornerPool CUDA kernels against ``trainer.model.corner_pool`` (mmdet's ``flip + torch.cummax + flip``), bit
for bit (needs a CUDA GPU).

Covers every mode, float32/float16/bfloat16, shapes from 1x1x1x1 to 2x256x192x192 (odd sizes, widths that are
not multiples of 32 or of the vector width, tall-thin and short-wide maps that take the H-split and multi-tile
paths), misaligned pointers, NaN (several payloads), +-inf, and +-0 ties where torch keeps the later element.
"""

from __future__ import annotations

from types import ModuleType

import pytest
import torch

from tests.corner_pool_cases import SMALL_SHAPES, assert_bitwise_equal, make_input, reference
from trt_plugins.fields import MODES

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"
    ),
]

SHAPES = [
    *SMALL_SHAPES,
    (2, 2, 32, 32),
    (1, 3, 64, 65),
    (1, 1, 4096, 4),  # one column pack: H is split over the block
    (1, 1, 3, 4099),  # long rows: many 32-lane tiles, partial last tile
    (1, 128, 128, 128),  # CornerNet at 511x511
    (2, 256, 192, 192),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(scope="module")
def kernels() -> ModuleType:
    from trt_plugins import kernels

    kernels.load_library()  # builds the library once, outside the timed/compared calls
    return kernels


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: "x".join(map(str, shape)))
@pytest.mark.parametrize("mode", list(MODES))
def test_kernel_matches_torch_cummax(
    kernels: ModuleType, mode: str, shape: tuple[int, ...], dtype: torch.dtype
) -> None:
    for seed, specials in ((0, False), (1, True)):
        x = make_input(shape, dtype, seed, specials)
        expected = reference(x, mode)
        actual = kernels.corner_pool(x, mode)
        torch.cuda.synchronize()
        assert_bitwise_equal(actual, expected, f"{mode} {tuple(shape)} {dtype} specials={specials}")


def test_known_example(kernels: ModuleType) -> None:
    """The example of cornernet_mmdet.md section 3."""
    x = torch.tensor([[1.0, 3, 2, 0], [0, 5, 1, 4], [2, 0, 0, 1]], device="cuda")[None, None]
    top = torch.tensor([[2.0, 5, 2, 4], [2, 5, 1, 4], [2, 0, 0, 1]], device="cuda")
    left = torch.tensor([[3.0, 3, 2, 0], [5, 5, 4, 4], [2, 1, 1, 1]], device="cuda")
    assert torch.equal(kernels.corner_pool(x, "top")[0, 0], top)
    assert torch.equal(kernels.corner_pool(x, MODES["left"])[0, 0], left)


@pytest.mark.parametrize("mode", list(MODES))
def test_misaligned_and_strided_inputs(kernels: ModuleType, mode: str) -> None:
    """A pointer one element off the 16-byte grid takes the scalar path; a strided view is made contiguous."""
    shape = (2, 3, 40, 64)
    x = make_input(shape, torch.float32, 2, True)
    buffer = torch.empty(x.numel() + 1, device="cuda")
    shifted = buffer[1:].view(shape)
    shifted.copy_(x)
    out_buffer = torch.empty(x.numel() + 1, device="cuda")
    out = kernels.corner_pool(shifted, mode, out=out_buffer[1:].view(shape))
    assert_bitwise_equal(out, reference(x, mode), f"{mode} misaligned")
    strided = x.transpose(2, 3)
    assert_bitwise_equal(kernels.corner_pool(strided, mode), reference(strided, mode), "strided")


def test_runs_on_the_current_stream(kernels: ModuleType) -> None:
    x = make_input((1, 64, 96, 128), torch.float16, 3, True)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out = kernels.corner_pool(x, "bottom")
        expected = reference(x, "bottom")
    stream.synchronize()
    assert_bitwise_equal(out, expected, "bottom on a side stream")


def test_rejects_bad_arguments(kernels: ModuleType) -> None:
    x = torch.zeros(1, 1, 4, 4, device="cuda")
    with pytest.raises(ValueError, match="mode"):
        kernels.corner_pool(x, "up")
    with pytest.raises(ValueError, match="4-D"):
        kernels.corner_pool(x[0], "top")
    with pytest.raises(ValueError, match="4-D"):
        kernels.corner_pool(x.double(), "top")
    assert kernels.corner_pool(torch.zeros(0, 3, 5, 5, device="cuda"), "left").shape == (0, 3, 5, 5)
