"""Reading ``torch.save`` files without ever running code from them.

A ``.pth`` file is a pickle (``data.pkl`` inside torch's zip archive, or the legacy stream), and a
pickle may name any importable function and call it: ``os.system`` through ``__reduce__``. Here
torch's own reader (``torch.load`` with ``pickle_module``) does the zip, storages and legacy framing,
and our unpickler does the pickle:

- Names resolve only from a fixed table (:data:`ALLOWED`): tensors, storages and the rebuild
  functions ``torch.save`` writes, numpy arrays, dtypes and scalars, builtin containers,
  ``collections.OrderedDict``. Nothing is ever imported by name.
- Every other name becomes a :class:`Placeholder` subclass that records its module and name: calling
  it, ``__new__`` and ``__setstate__`` only store their arguments. mmengine's ``HistoryBuffer`` or a
  crafted ``os.system`` come out as inert records, and the caller is told which classes were skipped.
- The opcodes that call or mutate objects (REDUCE, NEWOBJ, OBJ/INST, BUILD, item and list
  assignment) accept only table entries and placeholders; anything else is :class:`RefusedPickle`.
  So the only callables a loaded object graph can ever reach are the table's and the placeholders'.

There is no fallback to full unpickling and no switch that enables one.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import collections
import os
import pickle
import struct
import zipfile
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, BinaryIO, ClassVar

import numpy as np
import torch

from runtime.errors import UserError

try:  # numpy >= 2 keeps these in numpy._core; files written with numpy 1.x name numpy.core
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]

ZIP_MAGIC = b"PK\x03\x04"


class RefusedPickle(pickle.UnpicklingError):
    """The pickle asks for something no checkpoint needs (a call or a state change outside the table)."""


class Placeholder:
    """An object of a class this loader does not import: what the file said about it, and nothing more.

    Subclasses (one per ``module.name``, made by the unpickler) carry ``module`` and ``name``;
    instances keep the constructor ``args``/``kwargs``, the pickled ``state`` and any ``dict_items``
    / ``list_items`` the pickle added. No method runs anything.
    """

    module: ClassVar[str] = ""
    name: ClassVar[str] = ""
    made: ClassVar[Counter[str] | None] = None  # the loading file's count of objects per skipped class

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        if cls.made is not None:
            cls.made[cls.qualified_name()] += 1
        self = object.__new__(cls)
        self.args, self.kwargs = args, kwargs
        self.state: Any = None
        self.dict_items: dict[Any, Any] = {}
        self.list_items: list[Any] = []
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # arguments already kept by __new__
        pass

    @classmethod
    def qualified_name(cls) -> str:
        return f"{cls.module}.{cls.name}"

    def __repr__(self) -> str:
        return f"<skipped {self.qualified_name()}>"


def placeholder_name(obj: Any) -> str | None:
    """``module.name`` if ``obj`` is a placeholder (instance or class), else None."""
    if isinstance(obj, Placeholder):
        return obj.qualified_name()
    if isinstance(obj, type) and issubclass(obj, Placeholder) and obj is not Placeholder:
        return obj.qualified_name()
    return None


def _is_placeholder_class(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, Placeholder)


# --- the table -------------------------------------------------------------------------------------


def _clear_hooks(obj: Any) -> Any:
    # torch.save never writes hooks (torch's Note [Don't serialize hooks]); a file that does is
    # trying to have a callable run during backward, so whatever it set is dropped.
    if isinstance(obj, torch.Tensor):
        obj._backward_hooks = None  # type: ignore[assignment]
        if getattr(obj, "_post_accumulate_grad_hooks", None) is not None:
            obj._post_accumulate_grad_hooks = None  # type: ignore[attr-defined]
    return obj


def _without_hooks(fn: Callable[..., Any]) -> Callable[..., Any]:
    def rebuild(*args: Any) -> Any:
        return _clear_hooks(fn(*args))

    rebuild.__name__ = rebuild.__qualname__ = fn.__name__
    return rebuild


_TENSOR_REBUILDS = {
    f.__name__: _without_hooks(f)
    for f in (
        torch._utils._rebuild_tensor,
        torch._utils._rebuild_tensor_v2,
        torch._utils._rebuild_tensor_v3,
        torch._utils._rebuild_parameter,
        torch._utils._rebuild_parameter_with_state,
        torch._utils._rebuild_qtensor,
        torch._utils._rebuild_sparse_tensor,
        torch._utils._rebuild_meta_tensor_no_storage,
        torch._utils._rebuild_nested_tensor,
        torch._utils._rebuild_device_tensor_from_numpy,
        torch._utils._rebuild_device_tensor_from_cpu_tensor,
    )
}


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    """torch's rebuild for tensors with Python attributes, limited to plain tensors and parameters."""
    if func not in _TENSOR_REBUILDS.values() or new_type not in (torch.Tensor, torch.nn.Parameter):
        raise RefusedPickle(f"rebuilds a tensor through {_describe(func)} as {_describe(new_type)}")
    return _clear_hooks(torch._tensor._rebuild_from_type_v2(func, new_type, args, state))


def _encode(text: Any, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode``, as protocol-2 pickles use it for ``bytes``: latin-1 text only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise RefusedPickle(f"encodes {type(text).__name__} with codec {encoding!r}")
    return codecs.encode(text, "latin1")


def _np_reconstruct(subtype: Any, shape: Any, dtype: Any) -> Any:
    """numpy's array unpickling entry, for plain ``ndarray`` (an unknown subclass stays a placeholder)."""
    if _is_placeholder_class(subtype):
        return subtype(shape, dtype)
    if subtype is not np.ndarray:
        raise RefusedPickle(f"rebuilds an array as {_describe(subtype)}")
    return _multiarray._reconstruct(subtype, shape, dtype)


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor`` (protocol 0/1 objects): only ever builds a placeholder."""
    if not _is_placeholder_class(cls):
        raise RefusedPickle(f"reconstructs {_describe(cls)} through copyreg")
    return cls(base, state)


def _table() -> dict[str, Any]:
    table: dict[str, Any] = {
        "collections.OrderedDict": OrderedDict,
        "collections.Counter": Counter,
        "builtins.set": set,
        "builtins.frozenset": frozenset,
        "builtins.bytearray": bytearray,
        "builtins.bytes": bytes,
        "builtins.complex": complex,
        "_codecs.encode": _encode,
        "copyreg._reconstructor": _reconstructor,
        "torch.Tensor": torch.Tensor,
        "torch._tensor.Tensor": torch.Tensor,
        "torch.nn.parameter.Parameter": torch.nn.Parameter,
        "torch.Size": torch.Size,
        "torch.device": torch.device,
        "torch.serialization._get_layout": torch.serialization._get_layout,
        "torch.storage.UntypedStorage": torch.UntypedStorage,
        "torch.UntypedStorage": torch.UntypedStorage,
        "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    }
    table.update({f"torch._utils.{name}": fn for name, fn in _TENSOR_REBUILDS.items()})
    for v in vars(torch).values():  # dtypes and quantisation schemes are pickled as torch.float32 etc.
        if isinstance(v, (torch.dtype, torch.qscheme)):
            table[str(v)] = v
    for module in ("numpy.core", "numpy._core"):
        table[f"{module}.multiarray._reconstruct"] = _np_reconstruct
        table[f"{module}.multiarray.scalar"] = _multiarray.scalar
        table[f"{module}.numeric._frombuffer"] = _numeric._frombuffer
    table["numpy.ndarray"] = np.ndarray
    table["numpy.dtype"] = np.dtype
    for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
              np.float16, np.float32, np.float64, np.complex64, np.complex128, np.str_, np.bytes_):  # fmt: skip
        table[f"numpy.{t.__name__}"] = t
    return table


ALLOWED: dict[str, Any] = _table()
_CALLABLE_IDS = {id(v) for v in ALLOWED.values() if callable(v)}
# Classes whose __new__ may run for NEWOBJ (besides placeholders): builtin containers only.
_NEW_OK = (OrderedDict, Counter, set, frozenset)


def _describe(obj: Any) -> str:
    name = placeholder_name(obj)
    if name is not None:
        return f"skipped class {name}" if isinstance(obj, type) else f"an object of skipped class {name}"
    if isinstance(obj, type):
        return f"{obj.__module__}.{obj.__qualname__}"
    return f"a {type(obj).__module__}.{type(obj).__qualname__}"


def _printable(text: str, limit: int = 200) -> str:
    text = text if text.isprintable() else text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[:limit] + "..."


# --- the unpickler ---------------------------------------------------------------------------------


class RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """Python's pickle machine with name lookup and every calling opcode restricted (module docstring)."""

    dispatch: ClassVar[dict[int, Callable[..., None]]] = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]
    skipped: Counter[str]  # "module.name" -> objects of it turned into placeholders
    placeholders: dict[str, type[Placeholder]]  # one class per name, so equal names stay one class

    def __init__(self, file: BinaryIO, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        if not hasattr(self, "skipped"):  # used alone; _pickle_module shares them across a file's pickles
            self.skipped, self.placeholders = collections.Counter(), {}

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3 and self.fix_imports:  # Python 2 names, as pickle maps them
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        key = f"{module}.{name}"
        if key in ALLOWED:
            return ALLOWED[key]
        module, name = _printable(module), _printable(name)  # they end up in one-line messages
        key = f"{module}.{name}"
        cls = self.placeholders.get(key)
        if cls is None:
            self.skipped[key] += 0  # named even if no object of it is made; each object counts one
            attrs = {"module": module, "name": name, "made": self.skipped, "__module__": __name__}
            cls = type(name, (Placeholder,), attrs)
            cls.__qualname__ = f"Placeholder[{key}]"
            self.placeholders[key] = cls
        return cls

    def _call(self, func: Any, args: Any, kwargs: dict[str, Any] | None = None) -> Any:
        if not isinstance(args, tuple) or not isinstance(kwargs or {}, dict):
            raise RefusedPickle(f"calls {_describe(func)} with {type(args).__name__} arguments")
        if _is_placeholder_class(func):
            return func(*args, **(kwargs or {}))
        if id(func) in _CALLABLE_IDS and not kwargs:
            return func(*args)
        raise RefusedPickle(f"calls {_describe(func)}")

    def load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args)

    def _instantiate(self, klass: Any, args: list[Any]) -> None:  # INST and OBJ
        self.append(self._call(klass, tuple(args)))

    def _new(self, cls: Any, args: Any, kwargs: Any) -> None:
        if not (_is_placeholder_class(cls) or cls in _NEW_OK) or not isinstance(args, tuple):
            raise RefusedPickle(f"creates {_describe(cls)} with __new__")
        if not isinstance(kwargs, dict):
            raise RefusedPickle(f"creates {_describe(cls)} with {type(kwargs).__name__} keywords")
        self.append(cls.__new__(cls, *args, **kwargs))

    def load_newobj(self) -> None:
        args = self.stack.pop()
        self._new(self.stack.pop(), args, {})

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        self._new(self.stack.pop(), args, kwargs)

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, Placeholder):
            inst.state = state
        elif (
            type(inst) in (torch.Tensor, torch.nn.Parameter) and isinstance(state, tuple) and len(state) == 4
        ):
            inst.set_(*state)  # legacy tensor pickles: (storage, offset, size, stride)
        elif type(inst) is OrderedDict and isinstance(state, dict):
            inst.__dict__.update({k: v for k, v in state.items() if isinstance(k, str)})  # e.g. _metadata
        elif type(inst) is np.ndarray or isinstance(inst, np.dtype):
            inst.__setstate__(state)  # numpy's own C code parses (version, shape, dtype, order, data)
        else:
            raise RefusedPickle(f"sets the state of {_describe(inst)}")

    def _target(self, kinds: tuple[type, ...], what: str) -> Any:
        target = self.stack[-1]
        if not isinstance(target, (*kinds, Placeholder)):
            raise RefusedPickle(f"{what} {_describe(target)}")
        return target

    def load_append(self) -> None:
        self._extend([self.stack.pop()])

    def load_appends(self) -> None:
        self._extend(self.pop_mark())

    def _extend(self, items: list[Any]) -> None:
        target = self._target((list,), "appends to")
        (target.list_items if isinstance(target, Placeholder) else target).extend(items)

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._setitems([key, value])

    def load_setitems(self) -> None:
        self._setitems(self.pop_mark())

    def _setitems(self, items: list[Any]) -> None:
        target = self._target((dict,), "sets items of")
        d = target.dict_items if isinstance(target, Placeholder) else target
        for i in range(0, len(items), 2):
            d[items[i]] = items[i + 1]

    def load_additems(self) -> None:
        items = self.pop_mark()
        target = self._target((set,), "adds items to")
        (target.list_items.extend if isinstance(target, Placeholder) else target.update)(items)

    def refuse_extension(self) -> None:
        raise RefusedPickle("uses copyreg extension codes")

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.APPEND[0]] = load_append
    dispatch[pickle.APPENDS[0]] = load_appends
    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.SETITEMS[0]] = load_setitems
    dispatch[pickle.ADDITEMS[0]] = load_additems
    for _op in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_op[0]] = refuse_extension
    del _op


def _pickle_module(skipped: Counter[str]) -> SimpleNamespace:
    """A ``pickle_module`` for ``torch.load`` whose unpicklers count skipped names into ``skipped``."""
    unpickler = type(
        "Unpickler", (RestrictedUnpickler,), {"skipped": skipped, "placeholders": {}, "__module__": __name__}
    )

    def load(file: BinaryIO, **kwargs: Any) -> Any:  # torch's legacy format reads its header with this
        return unpickler(file, **kwargs).load()

    return SimpleNamespace(
        __name__=__name__, Unpickler=unpickler, load=load, UnpicklingError=pickle.UnpicklingError
    )


# --- files -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Loaded:
    """What :func:`load` read: the object, and the classes it turned into placeholders."""

    obj: Any
    skipped: dict[str, int] = field(default_factory=dict)  # "module.Class" -> placeholder objects made

    def skipped_text(self) -> str:
        return ", ".join(f"{k} x{n}" if n > 1 else k for k, n in sorted(self.skipped.items()))


_FIX = "re-download or re-save it"


def _classify(path: Path, f: BinaryIO) -> str:
    """``"zip"`` or ``"legacy"``, or a one-line UserError saying what the file is instead."""
    size = path.stat().st_size
    if size == 0:
        raise UserError(f"{path}: checkpoint file is empty; {_FIX}")
    head = f.read(4)
    f.seek(0)
    if head == ZIP_MAGIC:
        if not zipfile.is_zipfile(f):
            raise UserError(
                f"{path}: truncated checkpoint ({size} bytes, the end of the zip archive is missing); {_FIX}"
            )
        f.seek(0)
        names = [n.rsplit("/", 1)[-1] for n in zipfile.ZipFile(f).namelist()]
        f.seek(0)
        if "constants.pkl" in names:  # torch.load would hand this to torch.jit.load
            raise UserError(
                f"{path}: a TorchScript archive (torch.jit.save), not a checkpoint; pass the weights saved with torch.save"
            )
        if "data.pkl" not in names:
            raise UserError(
                f"{path}: a zip archive without data.pkl, not a PyTorch checkpoint; pass a .pth saved by torch.save"
            )
        return "zip"
    if head[:1] == b"\x80":  # pickle protocol >= 2: torch.save(..., _use_new_zipfile_serialization=False)
        return "legacy"
    raise UserError(
        f"{path}: not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle); pass a .pth saved by torch.save"
    )


def _looks_truncated(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e, (EOFError, struct.error)) or any(
        s in text for s in ("truncated", "ran out of input", "unexpected eof", "end of file")
    )


def load(path: str | os.PathLike[str], *, mmap: bool = False) -> Loaded:
    """Read a ``torch.save`` file on the CPU without running code from it (module docstring).

    Raises:
        UserError: missing, empty, truncated or non-checkpoint file; a pickle that asks for a call or a
            state change outside the table (the file names it); a corrupt archive. One line each.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; check the path")
    if os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "0").lower() in ("1", "y", "yes", "true"):
        raise UserError(
            f"{path}: TORCH_FORCE_WEIGHTS_ONLY_LOAD is set, which stops torch from using this (already restricted) reader; unset it"
        )
    skipped: Counter[str] = collections.Counter()
    module = _pickle_module(skipped)
    with open(path, "rb") as f:
        kind = _classify(path, f)
        try:
            # A path only for mmap (torch maps the file itself); otherwise the very file checked above.
            source: Any = path if mmap else f
            obj = torch.load(source, map_location="cpu", pickle_module=module, weights_only=False, mmap=mmap)
        except RefusedPickle as e:
            raise UserError(
                f"{path}: refused: its pickle {e}, which no checkpoint needs (nothing was run; the file may be malicious); "
                "re-save the weights with torch.save(model.state_dict())"
            ) from None
        except Exception as e:
            if kind == "legacy" and "magic number" in str(e).lower():
                raise UserError(
                    f"{path}: a pickle without torch.save's header, not a PyTorch checkpoint; pass a .pth saved by torch.save"
                ) from None
            if kind == "legacy" and _looks_truncated(e):
                raise UserError(
                    f"{path}: truncated checkpoint (the pickle stream ends early); {_FIX}"
                ) from None
            detail = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
            raise UserError(f"{path}: corrupt checkpoint ({type(e).__name__}: {detail}); {_FIX}") from None
    return Loaded(obj, dict(skipped))
