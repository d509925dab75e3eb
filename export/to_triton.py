"""``python -m export.to_triton MODEL --repo DIR``: a Triton Inference Server model repository for a CornerNet model.

Examples::

    python -m export.to_triton model.plan --repo models/            # TensorRT engine (+ its plugin library)
    python -m export.to_triton model.onnx --repo models/            # Triton's onnxruntime backend
    python -m export.to_triton model.onnx --repo models/ --net-backend python   # CPU machines (pytriton's server)
    python -m export.to_triton ckpt.pth --repo models/ --name cn_pth --max-batch 4 --instances 2
    python -m runtime.serve models/                                 # then serve it on 127.0.0.1

Writes four models: ``NAME_pre`` (Python backend: encoded image bytes -> padded, normalised tensor +
image meta), ``NAME_net`` (the network, with dynamic batching: Triton batches only equal shapes, which is
CornerNet's padded-shape rule), ``NAME_post`` (Python backend: network outputs -> detections through the
shared decoder and soft-NMS) and the ensemble ``NAME`` that clients call: input ``image`` (BYTES, one
JPEG/PNG per request), outputs ``boxes`` [1, N, 4] float32 xyxy in original pixels, ``scores`` [1, N],
``labels`` [1, N] int32 (names in ``labels.txt``). Classes, normalisation, test settings and provenance
(source checkpoint and sha256, precision) are config parameters ``cornernet.meta`` / ``cornernet.info``.
Other models in DIR are left alone; a README.md says how to run and call the repository.

Exit codes: 0 success, 2 bad usage or unreadable input.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.atomic_write import write_text_atomic
from runtime.backends import backend_kind
from runtime.cli import MODEL_HELP, parser_from_doc, run_cli
from runtime.errors import EXIT_OK, UserError
from runtime.meta import ModelMeta, sha256_file
from runtime.triton_models import IMAGE_META_LEN, INFO_PARAM, MAX_SIDE_PARAM, META_PARAM, MODEL_FILE_PARAM

NET_BACKENDS = ("auto", "tensorrt", "onnxruntime", "python")
NATIVE = {"tensorrt": "tensorrt", "onnxruntime": "onnxruntime", "pytorch": "python"}  # auto, by file kind
TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32"}
DEFAULT_MAX_SIDE = 2047  # canvas at most 2047x2047: HG-104 activations grow with the canvas area
MODEL_PY = {
    "pre": "from runtime.triton_models import PreModel as TritonPythonModel  # noqa: F401\n",
    "net": "from runtime.triton_models import NetModel as TritonPythonModel  # noqa: F401\n",
    "post": "from runtime.triton_models import PostModel as TritonPythonModel  # noqa: F401\n",
}


class PbEnum(str):
    """A protobuf enum value: written bare in ``config.pbtxt``."""


@dataclass
class NetSpec:
    """What the repository needs to know about the network file."""

    path: Path
    kind: str  # file kind: "pytorch", "onnxruntime", "tensorrt"
    meta: ModelMeta
    input_name: str
    outputs: list[tuple[str, str, list[int]]]  # (name, numpy dtype, dims without the batch)
    info: dict[str, Any]
    max_batch: int | None = None  # the engine profile's limit
    max_hw: tuple[int, int] | None = None  # the engine profile's largest canvas
    plugin: Path | None = None


# -- reading the model file ---------------------------------------------------------------------------


def _onnx_spec(path: Path) -> NetSpec:
    import onnx

    from runtime.backends.onnxruntime import (
        META_KEY,
        OUTPUTS_KEY,
        PRECISION_KEY,
        SOURCE_CHECKPOINT_KEY,
        SOURCE_SHA256_KEY,
    )

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise UserError(f"{path}: not a readable ONNX file ({type(e).__name__}); re-export it with python -m export.to_onnx") from None
    props = {p.key: p.value for p in model.metadata_props}
    if META_KEY not in props:
        raise UserError(f"{path}: no '{META_KEY}' metadata; export it with python -m export.to_onnx CHECKPOINT.pth")
    outputs = []
    for o in model.graph.output:
        t = o.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim][1:]
        outputs.append((o.name, dtype, dims))
    info = {
        "precision": props.get(PRECISION_KEY, "fp32"),
        "source_checkpoint": props.get(SOURCE_CHECKPOINT_KEY),
        "source_sha256": props.get(SOURCE_SHA256_KEY),
        "outputs": props.get(OUTPUTS_KEY, "proposals"),
    }
    return NetSpec(path, "onnxruntime", ModelMeta.from_json(props[META_KEY], f"{path} metadata"), model.graph.input[0].name, outputs, info)


def _checkpoint_spec(path: Path) -> NetSpec:
    from runtime.names import PROPOSAL_OUTPUTS
    from trainer.checkpoint import load_checkpoint

    meta = load_checkpoint(path).meta
    k = meta.test_cfg.corner_topk
    # what runtime.backends.pytorch runs: DeployModel's proposal outputs, (N, k) and (N, k, 2) offsets
    outputs = [(n, "int64" if n.endswith("inds") else "float32", [k, 2] if n.endswith("offs") else [k]) for n in PROPOSAL_OUTPUTS]
    info = {"precision": "fp32", "source_checkpoint": str(path.resolve()), "source_sha256": sha256_file(path), "outputs": "proposals"}
    return NetSpec(path, "pytorch", meta, "images", outputs, info)


def _engine_spec(path: Path, plugin: str | None) -> NetSpec:
    from runtime.engine_sidecar import Sidecar, check_engine_file, sidecar_path

    side = sidecar_path(path)
    if not side.is_file():
        raise UserError(f"{path}: no sidecar {side.name} next to it; build engines with python -m export.to_trt")
    sc = Sidecar.read(side)
    check_engine_file(sc, path, path.stat().st_size)
    outputs = [(t.name, t.dtype, list(t.shape[1:])) for t in sc.outputs]
    lib = None
    if sc.plugin is not None and sc.plugin.layers > 0:
        from trt_plugins import find_library

        lib = find_library(plugin, sc.plugin.library)  # --plugin, $CORNERNET_TRT_PLUGIN, the recorded path, the build's
    info = {
        "precision": sc.precision,
        "source_checkpoint": sc.source.checkpoint,
        "source_sha256": sc.source.checkpoint_sha256,
        "tensorrt_version": sc.tensorrt_version,
        "gpu": sc.gpu.name,
        "outputs": "proposals" if any(n == "tl_scores" for n, _, _ in outputs) else "heads",
    }
    max_hw = (int(sc.profile.max[2]), int(sc.profile.max[3]))
    return NetSpec(path, "tensorrt", sc.meta, sc.profile.input, outputs, info, int(sc.profile.max[0]), max_hw, lib)


def read_net_spec(model: str | Path, plugin: str | None = None) -> NetSpec:
    """Inspect a ``.pth`` / ``.onnx`` / ``.plan`` file (metadata only, no inference)."""
    path = Path(model)
    kind = backend_kind(path)
    if not path.is_file():
        raise UserError(f"{path}: model file not found; check the path")
    if kind == "onnxruntime":
        spec = _onnx_spec(path)
    elif kind == "tensorrt":
        spec = _engine_spec(path, plugin)
    else:
        spec = _checkpoint_spec(path)
    for name, dtype, _ in spec.outputs:
        if dtype not in TRITON_DTYPES:
            raise UserError(f"{path}: output '{name}' has dtype {dtype}, which this exporter cannot describe to Triton")
    return spec


# -- config.pbtxt ---------------------------------------------------------------------------------------


def _value(v: Any) -> str:
    if isinstance(v, PbEnum):
        return str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # JSON's escapes (\" \\ \n) are protobuf text escapes too
    raise TypeError(type(v))


def pbtxt(fields: dict[str, Any], indent: str = "") -> str:
    """Protobuf text format of nested dicts: a dict is a message, a list of dicts a repeated message."""
    lines = []
    for key, v in fields.items():
        if isinstance(v, dict):
            lines += [f"{indent}{key} {{", pbtxt(v, indent + "  "), f"{indent}}}"]
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            items = [f"{indent}  {{\n{pbtxt(item, indent + '    ')}\n{indent}  }}" for item in v]
            lines.append(f"{indent}{key} [\n" + ",\n".join(items) + f"\n{indent}]")
        elif isinstance(v, list):
            lines.append(f"{indent}{key}: [ {', '.join(_value(x) for x in v)} ]")
        else:
            lines.append(f"{indent}{key}: {_value(v)}")
    return "\n".join(line for line in lines if line)


def _tensor(name: str, dtype: str, dims: list[int], **extra: Any) -> dict[str, Any]:
    return {"name": name, "data_type": PbEnum(TRITON_DTYPES.get(dtype, dtype)), "dims": list(dims), **extra}


def _params(values: dict[str, str]) -> list[dict[str, Any]]:
    return [{"key": k, "value": {"string_value": v}} for k, v in values.items()]


def _map(pairs: dict[str, str]) -> list[dict[str, Any]]:
    return [{"key": k, "value": v} for k, v in pairs.items()]


@dataclass(frozen=True)
class RepoOptions:
    name: str = "cornernet"
    max_batch: int = 8
    instances: int = 1
    pre_post_instances: int = 2
    net_backend: str = "auto"
    preferred_batch: tuple[int, ...] = ()
    queue_delay_us: int = 0
    max_image_side: int | None = None


def model_configs(spec: NetSpec, opt: RepoOptions, net_backend: str) -> dict[str, dict[str, Any]]:
    """The four ``config.pbtxt`` contents (as nested dicts) by model name."""
    name = opt.name
    max_batch = min(opt.max_batch, spec.max_batch) if spec.max_batch else opt.max_batch
    max_hw = spec.max_hw or (opt.max_image_side or DEFAULT_MAX_SIDE,) * 2
    if opt.max_image_side:
        max_hw = (min(max_hw[0], opt.max_image_side), min(max_hw[1], opt.max_image_side))
    info = {
        **spec.info,
        "model_file": str(spec.path.resolve()),
        "model_sha256": sha256_file(spec.path),
        "net_backend": net_backend,
        "max_batch_size": max_batch,
        "max_image_hw": list(max_hw),
        "exporter": "cornernet-deploy export.to_triton",
    }
    common = {META_PARAM: spec.meta.to_json(), INFO_PARAM: json.dumps(info, sort_keys=True)}
    net_outputs = [_tensor(n, d, dims) for n, d, dims in spec.outputs]
    detections = [
        _tensor("boxes", "float32", [-1, 4]),
        _tensor("scores", "float32", [-1]),
        _tensor("labels", "int32", [-1], label_filename="labels.txt"),
    ]
    cpu_group = [{"count": opt.pre_post_instances, "kind": PbEnum("KIND_CPU")}]
    pre = {
        "name": f"{name}_pre",
        "backend": "python",
        "max_batch_size": 1,
        "input": [_tensor("image", "TYPE_STRING", [1])],
        "output": [_tensor("images", "float32", [3, -1, -1]), _tensor("image_meta", "float32", [IMAGE_META_LEN])],
        "instance_group": cpu_group,
        "parameters": _params({**common, MAX_SIDE_PARAM: f"{max_hw[0]},{max_hw[1]}"}),
    }
    batching: dict[str, Any] = {"max_queue_delay_microseconds": opt.queue_delay_us}
    if opt.preferred_batch:
        batching = {"preferred_batch_size": list(opt.preferred_batch), **batching}
    net: dict[str, Any] = {"name": f"{name}_net"}
    if net_backend == "tensorrt":
        net.update(platform="tensorrt_plan", backend="tensorrt")
    elif net_backend == "onnxruntime":
        net.update(platform="onnxruntime_onnx", backend="onnxruntime")
    else:
        net.update(backend="python")
    kind = "KIND_GPU" if net_backend == "tensorrt" else "KIND_AUTO" if net_backend == "onnxruntime" else "KIND_CPU"
    net.update(
        {
            "max_batch_size": max_batch,
            "input": [_tensor(spec.input_name, "float32", [3, -1, -1])],
            "output": net_outputs,
            "dynamic_batching": batching,
            "instance_group": [{"count": opt.instances, "kind": PbEnum(kind)}],
        }
    )
    if net_backend == "python":
        net["parameters"] = _params({MODEL_FILE_PARAM: f"model{spec.path.suffix.lower()}"})
    post = {
        "name": f"{name}_post",
        "backend": "python",
        "max_batch_size": 1,
        "input": [*net_outputs, _tensor("image_meta", "float32", [IMAGE_META_LEN])],
        "output": detections,
        "instance_group": cpu_group,
        "parameters": _params(common),
    }
    out_names = [n for n, _, _ in spec.outputs]
    ensemble = {
        "name": name,
        "platform": "ensemble",
        "max_batch_size": 1,
        "input": [_tensor("image", "TYPE_STRING", [1])],
        "output": detections,
        "ensemble_scheduling": {
            "step": [
                {
                    "model_name": f"{name}_pre",
                    "model_version": -1,
                    "input_map": _map({"image": "image"}),
                    "output_map": _map({"images": "images", "image_meta": "image_meta"}),
                },
                {
                    "model_name": f"{name}_net",
                    "model_version": -1,
                    "input_map": _map({spec.input_name: "images"}),
                    "output_map": _map({n: n for n in out_names}),
                },
                {
                    "model_name": f"{name}_post",
                    "model_version": -1,
                    "input_map": _map({n: n for n in [*out_names, "image_meta"]}),
                    "output_map": _map({n: n for n in ("boxes", "scores", "labels")}),
                },
            ]
        },
        "parameters": _params(common),
    }
    return {f"{name}_pre": pre, f"{name}_net": net, f"{name}_post": post, name: ensemble}


# -- the repository --------------------------------------------------------------------------------------


def _choose_backend(spec: NetSpec, requested: str) -> str:
    if requested == "auto":
        return NATIVE[spec.kind]
    allowed = {"tensorrt": "tensorrt", "onnxruntime": "onnxruntime"}.get(requested)
    if allowed and spec.kind != allowed:
        suffix = {"tensorrt": ".plan", "onnxruntime": ".onnx"}[requested]
        raise UserError(f"{spec.path}: --net-backend {requested} runs {suffix} files only; use --net-backend python (or auto)")
    return requested


MARKER = "# written by cornernet-deploy: python -m export.to_triton"


def _ours(model_dir: Path) -> bool:
    config = model_dir / "config.pbtxt"
    return config.is_file() and config.read_text(errors="replace").startswith(MARKER)


def write_repository(model: str | Path, repo: str | Path, opt: RepoOptions, plugin: str | None = None) -> list[Path]:
    """Write the four models for ``model`` into ``repo`` (created if needed); returns the model folders."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", opt.name):
        raise UserError(f"--name {opt.name!r}: use letters, digits, '_', '-' or '.' (it becomes folder and model names)")
    if opt.max_batch < 1 or opt.instances < 1 or opt.pre_post_instances < 1:
        raise UserError("--max-batch, --instances and --pre-post-instances must be at least 1")
    if opt.queue_delay_us < 0 or any(b < 1 or b > opt.max_batch for b in opt.preferred_batch):
        raise UserError(f"--queue-delay-us must be >= 0 and every --preferred-batch within 1..--max-batch ({opt.max_batch})")
    if opt.max_image_side is not None and opt.max_image_side < 1:
        raise UserError("--max-image-side must be at least 1")
    spec = read_net_spec(model, plugin)
    net_backend = _choose_backend(spec, opt.net_backend)
    configs = model_configs(spec, opt, net_backend)
    repo = Path(repo)
    if repo.exists() and not repo.is_dir():
        raise UserError(f"{repo}: exists and is not a folder; pass a folder for --repo")
    for model_name in configs:
        d = repo / model_name
        if d.exists() and not _ours(d):
            raise UserError(f"{d}: exists and was not written by export.to_triton; choose another --name or --repo")
    written = []
    for model_name, config in configs.items():
        d = repo / model_name
        if d.exists():
            shutil.rmtree(d)
        (d / "1").mkdir(parents=True)
        write_text_atomic(d / "config.pbtxt", f"{MARKER}\n{pbtxt(config)}\n")
        written.append(d)
    name = opt.name
    labels = "".join(f"{c}\n" for c in spec.meta.classes)
    for d in (repo / f"{name}_post", repo / name):
        write_text_atomic(d / "labels.txt", labels)
    for step in ("pre", "post"):
        write_text_atomic(repo / f"{name}_{step}" / "1" / "model.py", MODEL_PY[step])
    net_dir = repo / f"{name}_net" / "1"
    if net_backend == "python":
        write_text_atomic(net_dir / "model.py", MODEL_PY["net"])
        shutil.copyfile(spec.path, net_dir / f"model{spec.path.suffix.lower()}")
        if spec.kind == "tensorrt":
            shutil.copyfile(f"{spec.path}.json", net_dir / f"model{spec.path.suffix.lower()}.json")
    else:
        shutil.copyfile(spec.path, net_dir / ("model.plan" if net_backend == "tensorrt" else "model.onnx"))
    if spec.plugin is not None and net_backend == "tensorrt":
        (repo / f"{name}_net" / "plugins").mkdir()
        shutil.copyfile(spec.plugin, repo / f"{name}_net" / "plugins" / spec.plugin.name)
    write_text_atomic(repo / "README.md", repository_readme(repo))
    return written


def _ensembles(repo: Path) -> list[tuple[str, str]]:
    """(name, net backend) of every ensemble of ours in ``repo``."""
    found = []
    for config in sorted(repo.glob("*/config.pbtxt")):
        text = config.read_text(errors="replace")
        if 'platform: "ensemble"' in text and META_PARAM in text:
            net = (config.parent.parent / f"{config.parent.name}_net" / "config.pbtxt").read_text(errors="replace")
            backend = re.search(r'^backend: "([^"]+)"', net, re.M)
            found.append((config.parent.name, backend.group(1) if backend else "?"))
    return found


def repository_readme(repo: Path) -> str:
    """The repository's README.md: what is in it, how to serve it, how to call it."""
    models = _ensembles(repo)
    first = models[0][0] if models else "cornernet"
    rows = "\n".join(f"| `{n}` | `{n}_pre` -> `{n}_net` ({b}) -> `{n}_post` |" for n, b in models)
    plugins = sorted(str(p.relative_to(repo)) for p in repo.glob("*_net/plugins/*"))
    plugin = plugins[0] if plugins else f"{first}_net/plugins/libcornerpool_trt.so"
    return f"""# CornerNet model repository for Triton Inference Server

Written by `python -m export.to_triton` (cornernet-deploy). Clients call the ensembles:

| ensemble | steps |
|---|---|
{rows}

Input `image`: BYTES, shape `[1, 1]`, one encoded image (JPEG, PNG, ...) per request. Outputs: `boxes`
FP32 `[1, N, 4]` (x1, y1, x2, y2 in original image pixels), `scores` FP32 `[1, N]` (best first), `labels`
INT32 `[1, N]` (class index; names in `labels.txt`, one per line). The model's classes, normalisation and
test settings are the config parameter `cornernet.meta` (JSON); provenance (source checkpoint and its
sha256, precision, model file) is `cornernet.info`. `<name>_pre` and `<name>_post` (and a `python` net)
run Triton's Python backend importing the `cornernet-deploy` package, which must be installed in the
server's Python.

The network model batches requests dynamically: Triton batches only requests of equal input shape, and
CornerNet's padded canvas `(h | 127, w | 127)` is exactly that rule, so images of one size share batches.
Images larger than the `cornernet.max_image_hw` parameter of `<name>_pre` are refused with an error.

## Run it

On this machine (CPU; the server binary from the `nvidia-pytriton` wheel):

```bash
pip install --no-deps nvidia-pytriton==0.7.0 && pip install "cornernet-deploy[serve]"
python -m runtime.serve --setup          # once: numpy<2 for the server's Python backend stub
python -m runtime.serve {repo} --http-port 8000 --grpc-port 8001 --metrics-port 8002
```

In NVIDIA's server container (`nvcr.io/nvidia/tritonserver:<yy.mm>-py3`, the TensorRT version the engine
was built with), with this project installed in the container's Python for the Python-backend steps:

```bash
docker run --gpus all --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 \\
    -v $PWD/{repo.name}:/models -v /path/to/cornernet-deploy:/src \\
    nvcr.io/nvidia/tritonserver:<yy.mm>-py3 bash -c \\
    'pip install /src && tritonserver --model-repository /models \\
     --backend-config=tensorrt,plugins=/models/{plugin}'
```

The Python backend's stub must match the numpy it finds: a stub built against numpy 1.x (as in
`nvidia-pytriton` 0.7.0) misreads numpy 2 arrays and dies on the first BYTES input
(`deserialize_bytes_tensor` in its log); give such a stub numpy<2, as `python -m runtime.serve --setup` does.

A TensorRT engine with CornerPool layers needs the plugin library loaded into the server: the
`--backend-config=tensorrt,plugins=...` flag above (several libraries separated by `;`), or
`LD_PRELOAD=/models/{plugin} tritonserver ...`.

## Call it

```bash
# HTTP with Triton's binary extension: a JSON header, then the image as a 4-byte little-endian length + its bytes
IMG=image.jpg; N=$(stat -c%s $IMG)
HDR='{{"inputs":[{{"name":"image","shape":[1,1],"datatype":"BYTES","parameters":{{"binary_data_size":'$((N + 4))'}}}}]}}'
{{ printf %s "$HDR"; printf "$(printf '\\\\x%02x' $((N & 255)) $((N >> 8 & 255)) $((N >> 16 & 255)) $((N >> 24)))"; cat $IMG; }} > req.bin
curl -s localhost:8000/v2/models/{first}/infer -H "Inference-Header-Content-Length: ${{#HDR}}" --data-binary @req.bin
```

```python
import numpy as np, tritonclient.grpc as grpcclient
client = grpcclient.InferenceServerClient("localhost:8001")
image = grpcclient.InferInput("image", [1, 1], "BYTES")
image.set_data_from_numpy(np.array([[open("image.jpg", "rb").read()]], dtype=object))
result = client.infer("{first}", [image])
boxes, scores, labels = (result.as_numpy(n)[0] for n in ("boxes", "scores", "labels"))
```

Or through cornernet-deploy: `TritonClient("grpc://localhost:8001/{first}").detect(open("image.jpg", "rb").read())`
(`runtime.backends.triton`).
"""


# -- command line -----------------------------------------------------------------------------------------


def make_parser() -> argparse.ArgumentParser:
    p = parser_from_doc("python -m export.to_triton", __doc__)
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--repo", required=True, metavar="DIR", help="model repository folder (created; other models in it are kept)")
    p.add_argument("--name", default="cornernet", help="ensemble name; steps are NAME_pre, NAME_net, NAME_post (default: cornernet)")
    p.add_argument("--max-batch", type=int, default=8, metavar="N", help="largest batch the dynamic batcher forms (default: 8; engines: at most their profile's)")
    p.add_argument("--instances", type=int, default=1, metavar="K", help="network instances (default: 1)")
    p.add_argument("--pre-post-instances", type=int, default=2, metavar="K", help="instances of the pre/post models each (default: 2)")
    p.add_argument(
        "--net-backend",
        choices=NET_BACKENDS,
        default="auto",
        help="auto: tensorrt for .plan, onnxruntime for .onnx, python for .pth; python: our runtime backend inside "
        "Triton's Python backend (CPU machines, pytriton's server) (default: auto)",
    )
    p.add_argument("--preferred-batch", type=int, nargs="+", default=[], metavar="N", help="preferred batch sizes of the dynamic batcher")
    p.add_argument("--queue-delay-us", type=int, default=0, metavar="US", help="how long the batcher waits to fill a batch (default: 0)")
    p.add_argument(
        "--max-image-side",
        type=int,
        metavar="PX",
        help=f"refuse larger images (default: {DEFAULT_MAX_SIDE}; engines: their profile's largest canvas)",
    )
    p.add_argument("--plugin", metavar="FILE", help="CornerPool plugin library for a .plan (default: the one in its sidecar)")
    return p


def run(args: argparse.Namespace) -> int:
    opt = RepoOptions(
        name=args.name,
        max_batch=args.max_batch,
        instances=args.instances,
        pre_post_instances=args.pre_post_instances,
        net_backend=args.net_backend,
        preferred_batch=tuple(args.preferred_batch),
        queue_delay_us=args.queue_delay_us,
        max_image_side=args.max_image_side,
    )
    written = write_repository(args.model, args.repo, opt, args.plugin)
    for d in written:
        print(f"wrote    {d}")
    print(f"serve    python -m runtime.serve {args.repo}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, make_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
