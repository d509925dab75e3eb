"""TensorRT plugins of the project: ``cornernet::CornerPool`` (one folder per plugin, TensorRT OSS style).

``load()`` makes the plugin available to TensorRT in this process (building the library first if needed)::

    import trt_plugins
    trt_plugins.load()          # then parse ONNX files with cornernet::CornerPool nodes, or deserialize engines

Field names shared with the ONNX export are in :mod:`trt_plugins.fields`; the kernels without TensorRT are in
:mod:`trt_plugins.kernels`; ``python -m trt_plugins.build`` compiles everything ahead of time.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from runtime.errors import UserError
from trt_plugins.fields import PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION

__all__ = ["ENV_PLUGIN_LIBRARY", "library_path", "load"]

#: Environment variable naming a prebuilt plugin library to use instead of building one.
ENV_PLUGIN_LIBRARY = "CORNERNET_TRT_PLUGIN"

_lock = threading.Lock()
_loaded: str | None = None


def library_path() -> str:
    """Path of the plugin library :func:`load` uses: ``$CORNERNET_TRT_PLUGIN`` if set, else the build output
    (``trt_plugins/build/libcornerpool_trt.so`` or the user cache); it may not exist yet."""
    from trt_plugins import build

    override = os.environ.get(ENV_PLUGIN_LIBRARY)
    return (
        str(Path(override).resolve()) if override else str(build.default_build_dir() / build.PLUGIN_LIBRARY)
    )


def load() -> str:
    """Register the CornerPool plugin with TensorRT's plugin registry; return the library's path.

    Builds the library first when it is missing or older than its sources (needs nvcc and TensorRT headers),
    unless ``$CORNERNET_TRT_PLUGIN`` names a prebuilt one. Registers it with
    ``tensorrt.get_plugin_registry().load_library``. Idempotent: later calls return the same path and do
    nothing, since TensorRT refuses to register a library's creators twice.

    Raises:
        UserError: TensorRT is not importable, the library cannot be built, or TensorRT rejects it.
    """
    global _loaded
    with _lock:
        if _loaded is not None:
            return _loaded
        try:
            import tensorrt as trt
        except ImportError as error:
            raise UserError(
                f"the CornerPool TensorRT plugin needs TensorRT, which cannot be imported ({error}); "
                "install it with `pip install tensorrt`"
            ) from error
        from trt_plugins import build

        if os.environ.get(ENV_PLUGIN_LIBRARY):
            path = Path(library_path())
            if not path.is_file():
                raise UserError(f"${ENV_PLUGIN_LIBRARY} names {path}, which does not exist")
        else:
            path = build.ensure_plugin_library()
        registry = trt.get_plugin_registry()
        handle = registry.load_library(str(path))  # never raises: None on failure
        # None also means "creators already registered", e.g. by an earlier load of the same library.
        if handle is None and registry.get_creator(PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE) is None:
            raise UserError(
                f"TensorRT {trt.__version__} refused to load the plugin library {path} "
                "(see TensorRT's log above; was it built against another TensorRT major version?)"
            )
        _loaded = str(path)
        return _loaded
