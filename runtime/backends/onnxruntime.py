"""ONNX Runtime backend for ``.onnx`` files: CUDA provider when onnxruntime-gpu is installed, else CPU."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import UserError
from runtime.meta import ModelMeta

from .base import Backend

# Keys of the ONNX metadata_props that export writes and the runtime reads.
META_KEY = "cornernet.meta"  # ModelMeta JSON
SOURCE_CHECKPOINT_KEY = "cornernet.source_checkpoint"  # path of the checkpoint it was exported from
SOURCE_SHA256_KEY = "cornernet.source_sha256"
PRECISION_KEY = "cornernet.precision"  # "fp32" or "fp16"
OUTPUTS_KEY = "cornernet.outputs"  # "proposals" or "heads"
EXPORT_KEY = "cornernet.export"  # JSON: exporter versions, opset, corner-pool mode


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """``metadata_props`` of an ONNX file as a dict, without loading the weights."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise UserError(
            f"{path}: not a readable ONNX file ({type(e).__name__}); re-export it with python -m export.to_onnx"
        ) from None
    return {p.key: p.value for p in model.metadata_props}


class OnnxRuntimeBackend(Backend):
    """Runs an ONNX file exported by ``export.to_onnx`` (metadata tells classes and test settings)."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, device: str | None = None, threads: int | None = None) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: ONNX file not found; check the path")
        props = read_onnx_metadata(path)
        if META_KEY not in props:
            raise UserError(
                f"{path}: no '{META_KEY}' metadata, so it was not exported by cornernet-deploy; export it with python -m export.to_onnx CHECKPOINT.pth"
            )
        self.meta = ModelMeta.from_json(props[META_KEY], f"{path} metadata")
        available = ort.get_available_providers()
        want_cuda = device is None or device.startswith("cuda")
        if device is not None and device.startswith("cuda") and "CUDAExecutionProvider" not in available:
            raise UserError(
                f"--device {device}: this onnxruntime has no CUDA provider; pip uninstall onnxruntime && pip install onnxruntime-gpu"
            )
        providers = ["CUDAExecutionProvider"] if want_cuda and "CUDAExecutionProvider" in available else []
        providers.append("CPUExecutionProvider")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as e:
            raise UserError(f"{path}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:160]})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self.info: dict[str, Any] = {
            "onnx": str(path),
            "providers": self.session.get_providers(),
            "onnxruntime": ort.__version__,
            "precision": props.get(PRECISION_KEY, "fp32"),
            "source_checkpoint": props.get(SOURCE_CHECKPOINT_KEY),
            "source_sha256": props.get(SOURCE_SHA256_KEY),
        }
        if EXPORT_KEY in props:
            self.info["export"] = json.loads(props[EXPORT_KEY])

    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.session.run(
            list(self.output_names), {self.input_name: np.ascontiguousarray(images, dtype=np.float32)}
        )
        return dict(zip(self.output_names, outs, strict=True))
