"""TensorRT plugins of the project: ``cornernet::CornerPool`` (one folder per plugin, TensorRT OSS style).

Loading never compiles. :func:`find_library` picks a prebuilt plugin library, :func:`load` registers it with
TensorRT::

    import trt_plugins
    trt_plugins.load(trt_plugins.find_library())   # then parse ONNX files with CornerPool nodes, or deserialize engines

Building is explicit: ``python -m trt_plugins.build`` (or ``python -m export.to_trt``, which builds the plugin
when it is missing or older than its sources). Each built library carries its identity in ``LIBRARY.json``
(:mod:`trt_plugins.stamp`). Field names shared with the ONNX export are in :mod:`trt_plugins.fields`; the kernels
without TensorRT are in :mod:`trt_plugins.kernels`.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from runtime.errors import UserError
from trt_plugins.fields import PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION

__all__ = ["ENV_PLUGIN_LIBRARY", "default_library", "find_library", "library_path", "load"]

#: Environment variable naming a prebuilt plugin library.
ENV_PLUGIN_LIBRARY = "CORNERNET_TRT_PLUGIN"

_lock = threading.Lock()
_loaded: str | None = None


def default_library() -> Path:
    """Where ``python -m trt_plugins.build`` puts the plugin (``trt_plugins/build/`` or the user cache)."""
    from trt_plugins import build

    return build.default_build_dir() / build.PLUGIN_LIBRARY


def library_path() -> str:
    """``$CORNERNET_TRT_PLUGIN`` if set, else :func:`default_library` (it may not exist; :func:`find_library` says
    what to do when none does)."""
    override = os.environ.get(ENV_PLUGIN_LIBRARY)
    return str(Path(override).expanduser().resolve()) if override else str(default_library())


def find_library(explicit: str | os.PathLike[str] | None = None, recorded: str | None = None) -> Path:
    """The prebuilt plugin library to load; never builds one.

    Looks, in order, at ``explicit`` (``--plugin PATH``), ``$CORNERNET_TRT_PLUGIN``, ``recorded`` (the path an
    engine's sidecar recorded at build time) and the default build output (:func:`default_library`). A path
    given explicitly or in the environment must exist; the other two are used when they do.

    Raises:
        UserError: a given path does not exist, or no library was found (one line with the build command).
    """
    from trt_plugins.build import BUILD_COMMAND

    for given, what in ((explicit, "--plugin"), (os.environ.get(ENV_PLUGIN_LIBRARY), f"${ENV_PLUGIN_LIBRARY}")):
        if given:
            path = Path(given).expanduser().resolve()
            if not path.is_file():
                raise UserError(
                    f"{what} names {path}, which does not exist; build the plugin with {BUILD_COMMAND} "
                    f"(its library goes to {default_library()})"
                )
            return path
    looked = []
    for candidate in (recorded, str(default_library())):
        if candidate:
            if Path(candidate).is_file():
                return Path(candidate).resolve()
            looked.append(candidate)
    raise UserError(
        f"no CornerPool TensorRT plugin library (looked at {' and '.join(dict.fromkeys(looked))}, "
        f"--plugin and ${ENV_PLUGIN_LIBRARY} unset); build it with {BUILD_COMMAND} "
        "(needs nvcc, cmake and TENSORRT_INCLUDE_DIR=<TensorRT include/>), or pass --plugin PATH"
    )


def load(path: str | os.PathLike[str]) -> str:
    """Register the plugin library ``path`` with TensorRT's plugin registry; return the registered library's path.

    Loads only (``tensorrt.get_plugin_registry().load_library``), never compiles. A process registers one
    CornerPool library: TensorRT refuses a creator twice, so once one is registered, later calls do nothing and
    return that library's path (the caller checks its identity).

    Raises:
        UserError: TensorRT is not importable, ``path`` does not exist, or TensorRT rejects the library.
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
        library = Path(path).resolve()
        if not library.is_file():
            raise UserError(f"plugin library {library} does not exist; build it with python -m trt_plugins.build")
        registry = trt.get_plugin_registry()
        handle = registry.load_library(str(library))  # never raises: None on failure
        # None also means "creators already registered", e.g. by an earlier load of the same library.
        if handle is None and registry.get_creator(PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE) is None:
            raise UserError(
                f"TensorRT {trt.__version__} refused to load the plugin library {library} "
                "(see TensorRT's log above; was it built against another TensorRT major version?)"
            )
        _loaded = str(library)
        return _loaded
