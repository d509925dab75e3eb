"""The Python-backend models of a served CornerNet: ``<name>_pre``, ``<name>_post`` and the ``python`` ``<name>_net``.

Each ``model.py`` in a repository written by ``python -m export.to_triton`` is one line importing a class
from here, so the server runs the installed package's pre-processing, backends, decoder and soft-NMS,
never a copy. Settings travel in the model's ``config.pbtxt`` ``parameters`` (read in ``initialize``).

Inside Triton's Python backend a request becomes an error response, never a crash: a stub that dies
takes its model instance down for every other client.

``image_meta`` (``pre`` -> ``post``) is one float32 row per image, exact for integers below 2^24:
``[ori_h, ori_w, pad_h, pad_w, top, bottom, left, right]`` (:class:`runtime.preprocess.ImageMeta`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import UserError
from runtime.preprocess import ImageMeta

# Config parameter keys (string values), on the ensemble and on each step.
META_PARAM = "cornernet.meta"  # ModelMeta JSON: classes, normalisation, test settings
INFO_PARAM = "cornernet.info"  # provenance JSON: precision, source checkpoint + sha256, model file + sha256 ...
MODEL_FILE_PARAM = "cornernet.model_file"  # the python net: file name inside the version folder
MAX_SIDE_PARAM = "cornernet.max_image_hw"  # the pre model: "H,W", the largest image it accepts

IMAGE_META_LEN = 8


def pack_image_meta(meta: ImageMeta) -> np.ndarray:
    """``ImageMeta`` -> float32 ``(8,)`` (see the module docstring)."""
    return np.array([*meta.ori_shape, *meta.pad_shape, *meta.border], dtype=np.float32)


def unpack_image_meta(row: np.ndarray) -> ImageMeta:
    """float32 ``(8,)`` -> ``ImageMeta`` (single view, no flip)."""
    v = [float(x) for x in np.asarray(row, dtype=np.float32).reshape(-1)]
    if len(v) != IMAGE_META_LEN:
        raise UserError(f"input 'image_meta': expected {IMAGE_META_LEN} values, got {len(v)}")
    return ImageMeta((int(v[0]), int(v[1])), (int(v[2]), int(v[3])), (v[4], v[5], v[6], v[7]))


def config_parameters(args: dict[str, str]) -> dict[str, str]:
    """The string ``parameters`` of the model's config, from Triton's ``initialize`` arguments."""
    config = json.loads(args["model_config"])
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}


def _pb() -> Any:
    """Triton's ``triton_python_backend_utils``: importable only inside its Python backend."""
    import triton_python_backend_utils as pb_utils

    return pb_utils


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:300] if lines else ""


class _Model:
    """One response per request, in order; a failing request gets an error response naming the problem."""

    name = "model"

    def run(self, request: Any) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                responses.append(self.ok(self.run(request)))
            except Exception as e:
                responses.append(self.error(e))
        return responses

    @staticmethod
    def ok(outputs: dict[str, np.ndarray]) -> Any:
        pb = _pb()
        return pb.InferenceResponse(output_tensors=[pb.Tensor(n, np.ascontiguousarray(a)) for n, a in outputs.items()])

    def error(self, e: Exception) -> Any:
        pb = _pb()
        if isinstance(e, UserError):
            return pb.InferenceResponse(error=pb.TritonError(str(e)))
        # a bug or an out-of-memory must not take the stub (and every client) down: report it instead
        return pb.InferenceResponse(error=pb.TritonError(f"{self.name}: {type(e).__name__}: {_first_line(e)}"))


def _input(request: Any, name: str) -> np.ndarray:
    tensor = _pb().get_input_tensor_by_name(request, name)
    if tensor is None:
        raise UserError(f"missing input '{name}'")
    return tensor.as_numpy()


class PreModel(_Model):
    """``image`` BYTES ``[1, 1]`` -> ``images`` float32 ``[1, 3, h|127, w|127]`` + ``image_meta`` ``[1, 8]``."""

    name = "pre"

    def initialize(self, args: dict[str, str]) -> None:
        from runtime.meta import ModelMeta

        params = config_parameters(args)
        self.meta = ModelMeta.from_json(params[META_PARAM])
        h, w = (int(v) for v in params[MAX_SIDE_PARAM].split(","))
        self.max_hw = (h, w)
        # OpenCV refuses to decode more pixels than this before allocating them (a few-KB PNG can claim
        # 50000x50000); read at the first decode of this process, which is a request after this.
        os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(4 * h * w)

    def run(self, request: Any) -> dict[str, np.ndarray]:
        import cv2

        from runtime.image_io import decode_image
        from runtime.preprocess import preprocess

        data = _input(request, "image")
        if data.size != 1:
            raise UserError(f"input 'image': send one encoded image per request (shape [1, 1]), got shape {list(data.shape)}")
        raw = data.reshape(-1)[0]
        if isinstance(raw, str):  # JSON clients may send text; an image is bytes
            raw = raw.encode("latin-1", errors="replace")
        try:
            image = decode_image(bytes(raw), "input 'image'")
        except cv2.error:
            raise UserError(
                f"input 'image': larger than {4 * self.max_hw[0] * self.max_hw[1]} pixels, which this server does not decode; "
                f"send at most {self.max_hw[0]}x{self.max_hw[1]} (h x w)"
            ) from None
        h, w = image.shape[:2]
        if h > self.max_hw[0] or w > self.max_hw[1]:
            raise UserError(
                f"input 'image': {h}x{w} (h x w) is larger than this model serves ({self.max_hw[0]}x{self.max_hw[1]}); "
                "downscale it (or export the repository with a larger --max-image-side / engine profile)"
            )
        x, meta = preprocess(image, self.meta.mean, self.meta.std)
        return {"images": x[None], "image_meta": pack_image_meta(meta)[None]}


class NetModel(_Model):
    """Our own runtime backend (``runtime.backends.open_backend``) inside Triton: ``images`` -> named outputs.

    Triton's dynamic batcher hands over several requests at once, all of one padded shape (it batches
    only equal shapes); they run as one batch and the outputs are split back per request.
    """

    name = "net"

    def initialize(self, args: dict[str, str]) -> None:
        from runtime.backends import open_backend

        params = config_parameters(args)
        path = Path(args["model_repository"]) / args["model_version"] / params[MODEL_FILE_PARAM]
        self.backend = open_backend(path)

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        groups: dict[tuple[int, ...], list[tuple[int, np.ndarray]]] = {}
        for i, request in enumerate(requests):
            try:
                x = _input(request, "images")
            except Exception as e:
                responses[i] = self.error(e)
                continue
            groups.setdefault(tuple(x.shape[1:]), []).append((i, x))
        for items in groups.values():
            try:
                outputs = self.backend.infer(np.concatenate([x for _, x in items]).astype(np.float32, copy=False))
            except Exception as e:
                for i, _ in items:
                    responses[i] = self.error(e)
                continue
            start = 0
            for i, x in items:
                responses[i] = self.ok({k: v[start : start + len(x)] for k, v in outputs.items()})
                start += len(x)
        return responses

    def finalize(self) -> None:
        self.backend.close()


class PostModel(_Model):
    """Network outputs + ``image_meta`` -> ``boxes`` ``[1, N, 4]`` float32, ``scores`` ``[1, N]``, ``labels`` ``[1, N]`` int32."""

    name = "post"

    def initialize(self, args: dict[str, str]) -> None:
        from runtime.meta import ModelMeta

        # imported here, not per request: the decoder's numba kernels compile (or load) at import, before "ready"
        from runtime.pipeline import outputs_to_proposals
        from runtime.postprocess import postprocess

        self.to_proposals, self.postprocess = outputs_to_proposals, postprocess
        params = config_parameters(args)
        self.meta = ModelMeta.from_json(params[META_PARAM])
        config = json.loads(args["model_config"])
        self.output_names = [i["name"] for i in config["input"] if i["name"] != "image_meta"]

    def run(self, request: Any) -> dict[str, np.ndarray]:
        from runtime.preprocess import feature_shape

        meta = unpack_image_meta(_input(request, "image_meta"))
        outputs = {n: _input(request, n) for n in self.output_names}
        props = self.to_proposals(outputs, feature_shape(*meta.pad_shape), self.meta)
        dets = self.postprocess(props[:1], [meta], self.meta.test_cfg)
        return {
            "boxes": dets.boxes.astype(np.float32, copy=False).reshape(1, -1, 4),
            "scores": dets.scores.astype(np.float32, copy=False).reshape(1, -1),
            "labels": dets.labels.astype(np.int32).reshape(1, -1),
        }
