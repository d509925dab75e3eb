"""ONNX export: the CornerPool custom op and its fallbacks, exactness vs PyTorch, metadata, fp16, check.

The golden checkpoint is exported once per form (module-scoped fixtures, ~10 s each on 2 cores);
HG-104 with random weights is exported once (~40 s, ~6 GB of memory).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import AttributeProto, TensorProto

from export import check as export_check
from export import corner_pool_onnx as cp
from export import to_onnx
from export.fp16 import convert_to_fp16
from export.onnx_export import MAX_IR_VERSION, check_options, export_onnx, model_to_onnx, save_atomic
from runtime.backends.onnxruntime import (
    EXPORT_KEY,
    META_KEY,
    OUTPUTS_KEY,
    PRECISION_KEY,
    SOURCE_CHECKPOINT_KEY,
    SOURCE_SHA256_KEY,
)
from runtime.detector import Detector, Result
from runtime.errors import UserError
from runtime.image_io import read_image
from runtime.matching import match_detections
from runtime.meta import MMDET_MEAN_RGB, MMDET_STD_RGB, ModelMeta
from runtime.preprocess import preprocess
from trainer.checkpoint import build_model, load_checkpoint, sha256_file
from trainer.model import HEAD_OUTPUTS, CornerNet, hg104
from trainer.model.corner_pool import corner_pool_reference
from trainer.model.proposals import PROPOSAL_OUTPUTS, DeployModel
from trt_plugins.fields import FIELDS, PLUGIN_NAMESPACE, PLUGIN_SOURCE, PLUGIN_VERSION, parse_plugin_fields

ATOL = 1e-4
FORMS = ("plugin", "decomposed")


# --------------------------------------------------------------------------------------------------
# Fixtures: one export per (form, outputs) of the golden checkpoint


@pytest.fixture(scope="module")
def golden_ckpt(golden_dir: Path) -> Path:
    return golden_dir / "mmdet_checkpoint.pth"


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def exported(golden_ckpt: Path, out_dir: Path) -> Callable[[str, str], Path]:
    """``exported(form, outputs)``: the golden checkpoint exported once per combination."""
    cache: dict[tuple[str, str], Path] = {}

    def get(form: str, outputs: str) -> Path:
        if (form, outputs) not in cache:
            out = out_dir / f"golden_{form}_{outputs}.onnx"
            if (form, outputs) == ("plugin", "proposals"):  # the default, through the command line
                assert to_onnx.main([str(golden_ckpt), "--out", str(out)]) == 0
            else:
                export_onnx(golden_ckpt, out, outputs=outputs, corner_pool=form)
            cache[form, outputs] = out
        return cache[form, outputs]

    return get


@pytest.fixture(scope="module")
def golden_model(golden_ckpt: Path) -> CornerNet:
    return build_model(load_checkpoint(golden_ckpt))


def _session(path: Path | bytes) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # no per-initializer cleanup warnings
    return ort.InferenceSession(
        path if isinstance(path, bytes) else str(path), opts, providers=["CPUExecutionProvider"]
    )


def _attr(node: onnx.NodeProto, name: str) -> AttributeProto:
    return next(a for a in node.attribute if a.name == name)


# --------------------------------------------------------------------------------------------------
# Structure


@pytest.mark.parametrize("form", FORMS)
def test_checker_and_shape_inference(exported: Callable[[str, str], Path], form: str) -> None:
    path = exported(form, "proposals")
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    assert model.ir_version <= MAX_IR_VERSION
    assert {o.domain: o.version for o in model.opset_import}[""] == 18
    assert [i.name for i in model.graph.input] == ["images"]
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert tuple(o.name for o in model.graph.output) == PROPOSAL_OUTPUTS
    types = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    assert types["tl_inds"] == types["br_inds"] == TensorProto.INT64
    assert types["tl_scores"] == types["br_offs"] == TensorProto.FLOAT
    # A consumer's process has no cornernet schema registered: the local function must satisfy the checker.
    code = "import onnx, sys; onnx.checker.check_model(sys.argv[1], full_check=True)"
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)


def test_plugin_nodes_and_local_function(exported: Callable[[str, str], Path]) -> None:
    model = onnx.load(str(exported("plugin", "proposals")))
    nodes = [n for n in model.graph.node if n.op_type == "CornerPool"]
    assert len(nodes) == 4  # top + left, bottom + right of the last stack
    assert all(n.domain == "cornernet" for n in nodes)
    assert sorted(_attr(n, "mode").i for n in nodes) == [0, 1, 2, 3]
    for n in nodes:
        assert [a.name for a in n.attribute] == ["mode", "plugin_version", "plugin_namespace"]
        assert _attr(n, "mode").type == AttributeProto.INT
        assert _attr(n, "plugin_version").type == AttributeProto.STRING
        assert _attr(n, "plugin_version").s.decode() == PLUGIN_VERSION == "1"
        assert _attr(n, "plugin_namespace").type == AttributeProto.STRING
        assert _attr(n, "plugin_namespace").s.decode() == PLUGIN_NAMESPACE == "cornernet"
        assert n.name.startswith("bbox_head.")  # named after the module: TensorRT reports layers by name
    assert {o.domain: o.version for o in model.opset_import}["cornernet"] == 1
    (fn,) = model.functions
    assert (fn.domain, fn.name, list(fn.attribute)) == ("cornernet", "CornerPool", ["mode"])
    assert {n.domain for n in fn.node} == {""}  # the fallback uses standard ops only


def test_node_attributes_equal_plugin_fields(exported: Callable[[str, str], Path]) -> None:
    """contracts.md: the attributes export writes = the plugin's field list (+ plugin_version/namespace)."""
    model = onnx.load(str(exported("plugin", "proposals")))
    expected = {**FIELDS, "plugin_version": "kCHAR", "plugin_namespace": "kCHAR"}
    assert cp.plugin_attribute_types() == expected
    for node in cp.corner_pool_nodes(model):
        assert {a.name: cp.ONNX_TO_PLUGIN_FIELD[a.type] for a in node.attribute} == expected
    if PLUGIN_SOURCE.is_file():  # the C++ creator's list, parsed from its source
        assert parse_plugin_fields(PLUGIN_SOURCE.read_text()) == FIELDS


def test_decomposed_has_standard_ops_only(exported: Callable[[str, str], Path]) -> None:
    model = onnx.load(str(exported("decomposed", "proposals")))
    assert {n.domain for n in model.graph.node} == {""}
    assert not model.functions
    assert [o.domain for o in model.opset_import] == [""]


def test_metadata(exported: Callable[[str, str], Path], golden_ckpt: Path) -> None:
    model = onnx.load(str(exported("plugin", "proposals")))
    props = {p.key: p.value for p in model.metadata_props}
    assert list(props) == sorted(props)
    assert ModelMeta.from_json(props[META_KEY]) == load_checkpoint(golden_ckpt).meta
    assert json.loads(props[META_KEY])["pad_rule"] == "center_logical_or_127"
    assert props[SOURCE_CHECKPOINT_KEY] == str(golden_ckpt.resolve())
    assert props[SOURCE_SHA256_KEY] == sha256_file(golden_ckpt)
    assert props[PRECISION_KEY] == "fp32"
    assert props[OUTPUTS_KEY] == "proposals"
    info = json.loads(props[EXPORT_KEY])
    assert info["opset"] == 18 and info["corner_pool"] == "plugin"
    assert info["torch"] == torch.__version__ and info["onnx"] == onnx.__version__
    assert {"onnxscript", "cornernet_deploy", "model_config"} <= set(info)


def test_double_export_is_byte_identical(
    exported: Callable[[str, str], Path], golden_ckpt: Path, out_dir: Path
) -> None:
    first = exported("plugin", "proposals")
    second = export_onnx(golden_ckpt, out_dir / "again.onnx")
    assert first.read_bytes() == second.read_bytes()


def test_bad_options_are_user_errors(tmp_path: Path) -> None:
    for args in (("boxes", "plugin", 18), ("heads", "mmcv", 18), ("heads", "plugin", 17)):
        with pytest.raises(UserError):
            check_options(*args)
    assert to_onnx.main([str(tmp_path / "missing.pth")]) == 2


# --------------------------------------------------------------------------------------------------
# The function and the decomposition alone: bit-exact vs torch.cummax


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("mode", range(4))
def test_corner_pool_bit_exact(form: str, mode: int) -> None:
    model = cp.single_op_model(mode, form)
    onnx.checker.check_model(model, full_check=True)
    session = _session(model.SerializeToString())
    gen = torch.Generator().manual_seed(mode)
    for shape in [(1, 1, 1, 1), (2, 3, 5, 7), (1, 2, 1, 9), (1, 2, 9, 1), (2, 4, 37, 5), (1, 1, 300, 7)]:
        x = torch.randn(shape, generator=gen)
        if x.numel() >= 6:
            flat = x.view(-1)
            flat[1], flat[3], flat[-2] = float("inf"), float("-inf"), float("nan")
        got = session.run(None, {"X": x.numpy()})[0]
        want = corner_pool_reference(x, mode).numpy()
        assert np.array_equal(got, want, equal_nan=True), (form, mode, shape)


def test_corner_pool_fp16_bit_exact() -> None:
    """After fp16 conversion the pools get half inputs: the body stays exact (CastLike'd -inf)."""
    x = torch.randn(2, 3, 19, 23).half()
    x[0, 0, 4, 4] = float("-inf")
    for form in FORMS:
        for mode in range(4):
            session = _session(cp.single_op_model(mode, form, dtype=TensorProto.FLOAT16).SerializeToString())
            got = session.run(None, {"X": x.numpy()})[0]
            assert np.array_equal(got, corner_pool_reference(x.float(), mode).half().numpy())


# --------------------------------------------------------------------------------------------------
# Whole model vs PyTorch


@pytest.mark.parametrize("form", FORMS)
def test_heads_match_pytorch(
    exported: Callable[[str, str], Path], golden_model: CornerNet, golden_dir: Path, form: str
) -> None:
    session = _session(exported(form, "heads"))
    deploy = DeployModel(golden_model, "heads").eval()
    image = read_image(golden_dir / "coco" / "images" / "synthetic_2_420x300.jpg")
    padded, _ = preprocess(image, MMDET_MEAN_RGB, MMDET_STD_RGB)
    rng = np.random.default_rng(0)
    inputs = [
        rng.standard_normal((2, 3, 255, 383), dtype=np.float32),  # batch 2, landscape
        rng.standard_normal((1, 3, 383, 127), dtype=np.float32),  # portrait, another |127 shape
        padded[None],  # a real padded image
    ]
    for x in inputs:
        got = dict(zip(HEAD_OUTPUTS, session.run(list(HEAD_OUTPUTS), {"images": x}), strict=True))
        with torch.no_grad():
            want = [t.numpy() for t in deploy(torch.from_numpy(x))]
        for name, ref in zip(HEAD_OUTPUTS, want, strict=True):
            np.testing.assert_allclose(got[name], ref, rtol=0, atol=ATOL, err_msg=f"{form} {name} {x.shape}")


@pytest.fixture(scope="module")
def golden_reference(golden_ckpt: Path, golden_dir: Path) -> list[Result]:
    """PyTorch proposals and detections of every golden image (computed once for both forms)."""
    images = sorted((golden_dir / "coco" / "images").iterdir())
    assert len(images) >= 2
    with Detector(golden_ckpt, device="cpu") as ref:
        return list(ref.stream(images, keep_outputs=True))


@pytest.mark.parametrize("form", FORMS)
def test_detections_match_pytorch_on_golden_images(
    exported: Callable[[str, str], Path], golden_reference: list[Result], form: str
) -> None:
    with Detector(exported(form, "proposals"), device="cpu") as test:
        results = list(test.stream([str(r.source) for r in golden_reference], keep_outputs=True))
    for want, got in zip(golden_reference, results, strict=True):
        assert want.outputs is not None and got.outputs is not None
        np.testing.assert_array_equal(got.outputs["tl_inds"], want.outputs["tl_inds"])
        np.testing.assert_allclose(got.outputs["br_scores"], want.outputs["br_scores"], rtol=0, atol=ATOL)
        result = match_detections(want.detections(), got.detections())
        assert result.ok, f"{form} {Path(str(got.source)).name}: {result}"


def test_eval_ap_equals_pytorch(
    exported: Callable[[str, str], Path], golden_ckpt: Path, golden_dir: Path, tmp_path: Path
) -> None:
    from runtime.eval import main as eval_main

    stats = {}
    for name, model in (("pth", golden_ckpt), ("onnx", exported("plugin", "proposals"))):
        report = tmp_path / f"{name}.json"
        data = [
            "--ann",
            str(golden_dir / "coco" / "annotations.json"),
            "--images",
            str(golden_dir / "coco" / "images"),
        ]
        rc = eval_main([str(model), *data, "--device", "cpu", "--no-progress", "--report", str(report)])
        assert rc == 0
        stats[name] = json.loads(report.read_text())["stats"]
    assert stats["onnx"].keys() == stats["pth"].keys()
    for key, value in stats["pth"].items():
        assert abs(stats["onnx"][key] - value) <= 1e-4, key  # 0.01 AP points (contracts.md, fp32)
    assert stats["pth"]["AP"] > 0.3  # the golden model detects things: the comparison means something


# --------------------------------------------------------------------------------------------------
# export.check


def test_check_passes_then_fails_on_a_perturbed_file(
    exported: Callable[[str, str], Path], golden_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = exported("plugin", "proposals")
    args = ["--sizes", "127x255", "--images", str(golden_dir / "coco" / "images"), "--limit", "2"]
    assert export_check.main([str(good), *args]) == 0  # --against from the metadata
    out = capsys.readouterr().out
    assert "10/10 passed" in out and "FAILED" not in out

    model = onnx.load(str(good))
    weight = next(t for t in model.graph.initializer if t.name.endswith("tl_heat.1.1.conv.weight"))
    array = onnx.numpy_helper.to_array(weight).copy()
    array += 0.01
    weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
    bad = tmp_path / "perturbed.onnx"
    save_atomic(model, bad)
    assert export_check.main([str(bad), *args]) == 1
    assert "FAILED | tl_scores" in capsys.readouterr().out


def test_check_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert export_check.main([str(tmp_path / "missing.onnx")]) == 2
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    assert export_check.main([str(tmp_path / "junk.onnx")]) == 2
    assert export_check.main([str(tmp_path / "junk.onnx"), "--sizes", "12xfoo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)


# --------------------------------------------------------------------------------------------------
# fp16


def test_fp16_keeps_fp32_io_and_runs(
    golden_ckpt: Path, tmp_path: Path, exported: Callable[[str, str], Path]
) -> None:
    ckpt = tmp_path / "golden.pth"
    shutil.copyfile(golden_ckpt, ckpt)
    assert to_onnx.main([str(ckpt), "--fp16"]) == 0
    path = tmp_path / "golden.fp16.onnx"  # the default name next to the checkpoint
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    props = {p.key: p.value for p in model.metadata_props}
    assert props[PRECISION_KEY] == "fp16" and "fp16" in json.loads(props[EXPORT_KEY])
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    types = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    assert types == {
        n: TensorProto.INT64 if n.endswith("_inds") else TensorProto.FLOAT for n in PROPOSAL_OUTPUTS
    }
    # The pools run in fp16 (the plugin gets half inputs); the proposal tail stays fp32.
    value_types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    pools = cp.corner_pool_nodes(model)
    assert len(pools) == 4 and all(value_types[n.input[0]] == TensorProto.FLOAT16 for n in pools)
    assert {n.op_type for n in model.graph.node if n.op_type in ("Sigmoid", "TopK")} == {"Sigmoid", "TopK"}
    sigmoid_in = [n.input[0] for n in model.graph.node if n.op_type == "Sigmoid"]
    assert all(value_types.get(v, TensorProto.FLOAT) == TensorProto.FLOAT for v in sigmoid_in)

    x = np.random.default_rng(0).standard_normal((1, 3, 255, 383), dtype=np.float32)
    got = _session(path).run(None, {"images": x})
    want = _session(exported("plugin", "proposals")).run(None, {"images": x})
    for name, a, b in zip(PROPOSAL_OUTPUTS, got, want, strict=True):
        assert a.dtype == b.dtype, name
        assert np.isfinite(a).all(), name
    np.testing.assert_allclose(got[0], want[0], atol=5e-3)  # tl_scores: sorted, fp16 features
    assert (got[1] == want[1]).mean() > 0.8  # most top-k corners are the same ones


def test_fp16_conversion_of_heads_keeps_outputs_fp32(exported: Callable[[str, str], Path]) -> None:
    model = convert_to_fp16(onnx.load(str(exported("decomposed", "heads"))))
    assert all(o.type.tensor_type.elem_type == TensorProto.FLOAT for o in model.graph.output)
    x = np.random.default_rng(1).standard_normal((1, 3, 127, 255), dtype=np.float32)
    got = _session(model.SerializeToString()).run(None, {"images": x})
    want = _session(exported("decomposed", "heads")).run(None, {"images": x})
    for a, b in zip(got, want, strict=True):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, atol=5e-2)


# --------------------------------------------------------------------------------------------------
# HG-104


def test_hg104_random_weights_exports_and_passes_checker(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = hg104()
    model = CornerNet(cfg).eval()
    t0 = time.perf_counter()
    proto = model_to_onnx(model, ModelMeta(classes=tuple(f"c{i}" for i in range(cfg.num_classes))))
    seconds = time.perf_counter() - t0
    path = tmp_path / "hg104.onnx"
    save_atomic(proto, path)
    print(f"HG-104 export {seconds:.1f} s, {path.stat().st_size / 1e6:.0f} MB")
    del proto, model
    onnx.checker.check_model(str(path), full_check=True)
    loaded = onnx.load(str(path))
    assert len(cp.corner_pool_nodes(loaded)) == 4
    # 201M parameters less the first stack's heads, which the deployed graph does not use
    assert sum(int(np.prod(t.dims)) for t in loaded.graph.initializer) > 190e6
    # ONNX Runtime loads and runs it at the smallest padded size (the function fallback included).
    out = _session(path).run(["tl_scores"], {"images": np.zeros((1, 3, 127, 127), np.float32)})[0]
    assert out.shape == (1, 100) and np.isfinite(out).all()
