"""A served model as a detector: ``TritonClient("grpc://HOST:PORT/NAME").detect(jpeg_bytes) -> Detections``.

Talks to an ensemble written by ``python -m export.to_triton`` (input ``image`` BYTES ``[1, 1]``; outputs
``boxes``, ``scores``, ``labels``) over gRPC or HTTP with ``tritonclient``. The model's classes,
normalisation and test settings (``meta``) and its provenance (``info``) come from the served config's
``cornernet.meta`` / ``cornernet.info`` parameters, so a client needs nothing but the address.

``detect`` is thread-safe: tritonclient's clients are not, so each thread gets its own connection.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from typing import Any

import numpy as np

from runtime.decode import Detections
from runtime.errors import UserError
from runtime.meta import ModelMeta
from runtime.triton_models import INFO_PARAM, META_PARAM

ADDRESS_RE = re.compile(r"^(grpc|http)://([A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\]):(\d{1,5})/([A-Za-z0-9_.-]+)/?$")
ADDRESS_FORM = "grpc://HOST:PORT/NAME or http://HOST:PORT/NAME (e.g. grpc://127.0.0.1:8001/cornernet)"
OUTPUTS = ("boxes", "scores", "labels")


def parse_address(address: str) -> tuple[str, str, str]:
    """``grpc://HOST:PORT/NAME`` -> ``("grpc", "HOST:PORT", "NAME")``; a ``UserError`` otherwise."""
    m = ADDRESS_RE.match(address.strip())
    if not m or not 0 < int(m.group(3)) < 65536:
        raise UserError(f"{address}: not a served model's address; expected {ADDRESS_FORM}")
    return m.group(1), f"{m.group(2)}:{m.group(3)}", m.group(4)


def _message(e: Exception) -> str:
    msg = e.message() if hasattr(e, "message") and callable(e.message) else str(e)
    return " ".join(str(msg or e).split())[:400]


class TritonClient:
    """End-to-end client of a served CornerNet ensemble.

    Args:
        address: ``grpc://HOST:PORT/NAME`` or ``http://HOST:PORT/NAME``.
        timeout_s: per-request timeout (and the connection checks' bound).

    Raises:
        UserError: malformed address, no server there, no such model or not ready, not an export.to_triton model.
    """

    def __init__(self, address: str, timeout_s: float = 120.0) -> None:
        self.address = address
        self.protocol, self.url, self.model = parse_address(address)
        self.timeout_s = float(timeout_s)
        if self.protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        self._module: Any = module
        self._local = threading.local()
        self._lock = threading.Lock()
        self._clients: list[Any] = []
        config = self._connect()
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        if META_PARAM not in params:
            raise UserError(
                f"{address}: model '{self.model}' carries no '{META_PARAM}' parameter, so it was not written by "
                "python -m export.to_triton; serve a repository written by it"
            )
        self.meta = ModelMeta.from_json(params[META_PARAM], f"{address} config")
        self.info: dict[str, Any] = {
            "address": address,
            "protocol": self.protocol,
            "model": self.model,
            **json.loads(params.get(INFO_PARAM) or "{}"),
        }

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            if self.protocol == "grpc":
                client = self._module.InferenceServerClient(self.url)
            else:
                client = self._module.InferenceServerClient(
                    self.url, connection_timeout=self.timeout_s, network_timeout=self.timeout_s
                )
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _connect(self) -> dict[str, Any]:
        """Check server and model; return the model's config as a dict."""
        client = self._client()
        kw = {"client_timeout": min(self.timeout_s, 10.0)} if self.protocol == "grpc" else {}
        try:
            live = client.is_server_live(**kw)
        except Exception as e:
            raise UserError(
                f"{self.address}: no Triton server answers at {self.url} ({_message(e)}); start one with python -m runtime.serve REPO"
            ) from None
        if not live:
            raise UserError(f"{self.address}: the Triton server at {self.url} is not live; see its log")
        try:
            ready = client.is_model_ready(self.model, **kw)
            if not ready:
                index = client.get_model_repository_index(**({"as_json": True} if self.protocol == "grpc" else {}))
                models = index.get("models", []) if isinstance(index, dict) else index
                states = {m.get("name"): m.get("state", "") + (f" ({m['reason']})" if m.get("reason") else "") for m in models}
                if self.model not in states:
                    raise UserError(
                        f"{self.address}: the server has no model '{self.model}' (it has: {', '.join(sorted(states)) or 'none'}); "
                        "check the name after the port"
                    )
                raise UserError(f"{self.address}: model '{self.model}' is not ready ({states[self.model] or 'unavailable'}); see the server log")
            if self.protocol == "grpc":
                return dict(client.get_model_config(self.model, as_json=True, **kw)["config"])
            return dict(client.get_model_config(self.model))
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"{self.address}: the server refused '{self.model}': {_message(e)}") from None

    def detect(self, data: bytes) -> Detections:
        """One encoded image (JPEG/PNG/... bytes) -> its detections (original pixels, best first).

        Raises:
            UserError: the server's error (e.g. an undecodable image), or no answer within the timeout.
        """
        m = self._module
        image = m.InferInput("image", [1, 1], "BYTES")
        image.set_data_from_numpy(np.array([[bytes(data)]], dtype=np.object_))
        outputs = [m.InferRequestedOutput(n) for n in OUTPUTS]
        kw = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        try:
            result = self._client().infer(self.model, [image], outputs=outputs, **kw)
        except Exception as e:
            raise UserError(f"{self.address}: {_message(e)}") from None
        boxes, scores, labels = (result.as_numpy(n) for n in OUTPUTS)
        return Detections(
            boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            scores=np.asarray(scores, dtype=np.float32).reshape(-1),
            labels=np.asarray(labels).astype(np.int64).reshape(-1),
        )

    def statistics(self, model: str | None = None) -> dict[str, Any]:
        """Triton's inference statistics of ``model`` (default: the ensemble) as a dict."""
        client = self._client()
        name = model or self.model
        if self.protocol == "grpc":
            return dict(client.get_inference_statistics(name, as_json=True))
        return dict(client.get_inference_statistics(name))

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            with contextlib.suppress(Exception):  # best effort: the server may already be gone
                client.close()
        self._local = threading.local()

    def __enter__(self) -> TritonClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
