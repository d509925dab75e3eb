"""``runtime.eval --verify`` cannot be fooled: every broken export fails it, every exact export passes.

Two models: mmdet's golden checkpoint (trained, real peaks) and a tiny model trained here for a few
steps, whose corner scores are nearly tied (its ONNX Runtime export flips local-max and top-k choices
without any error: the near-tie rule of runtime/verify.py must pass it). Each is exported to ONNX
(plugin form; decomposed; fp16) and broken the way real export bugs break a model, on the ONNX graph
itself: a heatmap weight scaled by 1.01 and by 1.5, two class channels swapped, an embedding conv
perturbed, offsets moved by half a pixel, one corner pool made an identity, left and right pooling
swapped, and an fp16 file judged by fp32 rules. The initializers and nodes are found by what they
are (branch name, op type, mode), not by one model's exact names.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import ModelProto, numpy_helper

from export import onnx_export
from export.onnx_export import build_onnx, save_atomic
from runtime.eval import main as eval_main

Mutation = Callable[[ModelProto], None]
# CornerPool modes (contracts.md): 0 top, 1 bottom, 2 left, 3 right.
LEFT, RIGHT = 2, 3


def _branch_weights(model: ModelProto, branch: str, suffix: str = "weight") -> list[onnx.TensorProto]:
    """Initializers of the last stack's ``branch`` (``tl_heat``, ``tl_emb``, ...), first conv first."""
    found = [t for t in model.graph.initializer if branch in t.name and t.name.endswith(suffix)]
    if not found:
        raise AssertionError(f"no {branch} *{suffix} initializer in the graph")
    last_stack = max(t.name.split(branch, 1)[1].split(".")[1] for t in found)  # '.1.1.conv.weight' -> '1'
    return sorted((t for t in found if t.name.split(branch, 1)[1].split(".")[1] == last_stack), key=lambda t: t.name)


def _set(t: onnx.TensorProto, array: np.ndarray) -> None:
    t.CopyFrom(numpy_helper.from_array(array.astype(numpy_helper.to_array(t).dtype), t.name))


def scale_largest_heat_weight(factor: float) -> Mutation:
    """The largest weight tensor of the top-left heatmap branch, scaled (a wrong BN fold, say)."""

    def mutate(model: ModelProto) -> None:
        t = max(_branch_weights(model, "tl_heat"), key=lambda t: int(np.prod(t.dims)))
        _set(t, numpy_helper.to_array(t) * factor)

    return mutate


def swap_class_channels(model: ModelProto) -> None:
    """The last conv of the top-left heatmap branch: output channels 0 and 1 (weight and bias) swapped."""
    for t in (_branch_weights(model, "tl_heat")[-1], _branch_weights(model, "tl_heat", "bias")[-1]):
        a = numpy_helper.to_array(t).copy()
        a[[0, 1]] = a[[1, 0]]
        _set(t, a)


def perturb_embedding(model: ModelProto) -> None:
    """Noise on the top-left embedding's last conv: other pairs, same corners and scores."""
    t = _branch_weights(model, "tl_emb")[-1]
    w = numpy_helper.to_array(t)
    _set(t, w + np.random.default_rng(0).normal(0, 0.5 * w.std(), w.shape))


def shift_offsets(model: ModelProto) -> None:
    """Half a feature pixel added to both top-left offsets (the last conv's bias)."""
    t = _branch_weights(model, "tl_off", "bias")[-1]
    _set(t, numpy_helper.to_array(t) + 0.5)


def _pools(model: ModelProto) -> list[onnx.NodeProto]:
    pools = [n for n in model.graph.node if n.op_type == "CornerPool"]
    assert pools, "no CornerPool node in the graph"
    return pools


def pool_to_identity(model: ModelProto) -> None:
    node = _pools(model)[0]
    node.op_type, node.domain = "Identity", ""
    del node.attribute[:]


def swap_left_right(model: ModelProto) -> None:
    swapped = 0
    for node in _pools(model):
        for a in node.attribute:
            if a.name == "mode" and a.i in (LEFT, RIGHT):
                a.i = RIGHT if a.i == LEFT else LEFT
                swapped += 1
    assert swapped >= 2


MUTATIONS: dict[str, Mutation] = {
    "heat_weight_x1.01": scale_largest_heat_weight(1.01),
    "heat_weight_x1.5": scale_largest_heat_weight(1.5),
    "class_channels_swapped": swap_class_channels,
    "embedding_perturbed": perturb_embedding,
    "offsets_plus_half_pixel": shift_offsets,
    "corner_pool_identity": pool_to_identity,
    "left_right_pools_swapped": swap_left_right,
}


@contextlib.contextmanager
def _one_trace() -> Iterator[None]:
    """Trace the network once for both corner-pool forms: the exporter applies the form to the traced
    graph afterwards (``model_to_onnx``), and tracing is most of an export's time."""
    real, cache = onnx_export.trace_to_onnx, {}

    def traced(model: object, names: tuple[str, ...], opset: int) -> ModelProto:
        if (names, opset) not in cache:
            cache[names, opset] = real(model, names, opset)  # type: ignore[arg-type]
        copy = ModelProto()
        copy.CopyFrom(cache[names, opset])
        return copy

    onnx_export.trace_to_onnx = traced
    try:
        yield
    finally:
        onnx_export.trace_to_onnx = real


def write_variants(ckpt: Path, out: Path) -> dict[str, Path]:
    """Exact exports (plugin, decomposed, fp16) and every mutation of the plugin form, as files."""
    from export.fp16 import convert_to_fp16

    with _one_trace():
        plugin = build_onnx(ckpt, corner_pool="plugin")
        decomposed = build_onnx(ckpt, corner_pool="decomposed")
    assert not any(n.op_type == "CornerPool" for n in decomposed.graph.node)
    files = {"exact": plugin, "decomposed": decomposed, "fp16": convert_to_fp16(plugin)}
    for name, mutate in MUTATIONS.items():
        model = ModelProto()
        model.CopyFrom(plugin)
        mutate(model)
        files[name] = model
    paths = {}
    for name, model in files.items():
        paths[name] = out / f"{name}.onnx"
        save_atomic(model, paths[name])
    return paths


# --------------------------------------------------------------------------------------------------
# The matrix

# variant -> (extra eval options, expected exit code)
EXPECTED: dict[str, tuple[tuple[str, ...], int]] = {
    "exact": ((), 0),
    "decomposed": ((), 0),
    "fp16": ((), 0),  # judged by its own (fp16) rules
    "fp16_by_fp32_rules": (("--rules", "fp32"), 1),
    **{name: ((), 1) for name in MUTATIONS},
}


@pytest.fixture(scope="module")
def models(golden_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """Both models: checkpoint, data set and every variant's file."""
    from trainer import train
    from trainer.data import synthetic

    root = tmp_path_factory.mktemp("mutations")
    golden = root / "golden" / "golden.pth"
    golden.parent.mkdir()
    golden.write_bytes((golden_dir / "mmdet_checkpoint.pth").read_bytes())

    synth = synthetic.generate(root / "synth", num_train=16, num_val=4, seed=1)
    run = root / "tiny"
    argv = ["--preset", "tiny", "--gpus", "0", "--batch", "2", "--crop", "127", "--workers", "0", "--no-progress",
            "--coco", str(synth["root"]), "--out-dir", str(run), "--epochs", "2", "--eval-interval", "0"]  # fmt: skip
    assert train.main(argv) == 0
    tiny = run / "epoch_2.pth"  # 16 steps: corner scores still nearly tied (0.05-0.09, steps of ~1e-6)

    out = {}
    for name, ckpt, ann, images in (
        ("golden", golden, golden_dir / "coco" / "annotations.json", golden_dir / "coco" / "images"),
        ("tiny", tiny, synth["val_ann"], synth["val_images"]),
    ):
        variants = write_variants(ckpt, ckpt.parent)
        out[name] = {"ckpt": ckpt, "ann": Path(ann), "images": Path(images), **variants}
        out[name]["fp16_by_fp32_rules"] = variants["fp16"]
    return out


@pytest.mark.parametrize("variant", list(EXPECTED))
@pytest.mark.parametrize("model", ["golden", "tiny"])
def test_verify_fails_every_broken_export_and_passes_exact_ones(
    models: dict[str, dict[str, Path]], model: str, variant: str, tmp_path: Path
) -> None:
    m = models[model]
    extra, expected = EXPECTED[variant]
    report = tmp_path / "report.json"
    argv = [str(m[variant]), "--ann", str(m["ann"]), "--images", str(m["images"]), "--device", "cpu",
            "--no-progress", "--verify", str(m["ckpt"]), "--report", str(report), *extra]  # fmt: skip
    code = eval_main(argv)
    verify = json.loads(report.read_text())["verify"]
    failed = [c["name"] for c in verify["criteria"] if not c["passed"]]
    assert code == expected, f"{model} {variant}: exit {code}, failed criteria {failed}"
    assert verify["passed"] is (expected == 0)
    if expected:
        # Caught by the outputs or the matched detections, not only by ΔAP (which saturates on small sets).
        assert set(failed) - {"ΔAP"}, failed
    else:
        names = [c["name"] for c in verify["criteria"]]
        assert names[0] == "finite" and {"tl_scores", "tl_inds", "detections", "ΔAP"} <= set(names)
