"""Reading a checkpoint never runs code from it; mmengine runner checkpoints load without mmengine.

Crafted pickles carry payloads that would create a marker file (``os.system``, ``exec``, ``eval`` and
nested tricks through ``getattr``, ``attrgetter``, ``functools.partial``, ``copyreg``, torch's rebuild
functions, ``__setstate__`` and raw opcodes). Each must either load with the payload left as an inert
placeholder or fail with a one-line error, and the marker must never appear; the same for every command
that reads checkpoints.
"""

from __future__ import annotations

import builtins
import contextlib
import copyreg
import functools
import importlib
import json
import operator
import os
import pickle
import struct
import sys
import types
import warnings
import zipfile
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from runtime.errors import UserError
from trainer import safe_load
from trainer.checkpoint import load_checkpoint
from trainer.safe_load import Placeholder, placeholder_name


class Call:
    """Pickles as ``func(*args)``: what a crafted ``__reduce__`` asks the unpickler to do."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args

    def __call__(self, *args: Any) -> None:  # pickle wants the callable slot to hold a callable
        raise AssertionError("only pickled, never called")


class SetstateRunsCode:
    """Pickled as class + state: a loader that called ``__setstate__`` would run ``os.system``."""

    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self) -> tuple[Any, ...]:
        return SetstateRunsCode, ("",), {"cmd": self.cmd}

    def __setstate__(self, state: dict[str, str]) -> None:
        os.system(state["cmd"])


def _touch(marker: Path) -> str:
    return f"touch {marker}"


def _open_code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


# Each payload: (id, make(marker) -> object to pickle, "loads" or "refused" or "error").
PAYLOADS: list[tuple[str, Callable[[Path], Any], str]] = [
    ("os.system", lambda m: Call(os.system, _touch(m)), "loads"),
    ("exec", lambda m: Call(builtins.exec, _open_code(m)), "loads"),
    ("eval", lambda m: Call(builtins.eval, _open_code(m)), "loads"),
    ("getattr-import", lambda m: Call(Call(getattr, Call(__import__, "os"), "system"), _touch(m)), "refused"),
    (
        "attrgetter",
        lambda m: Call(Call(operator.attrgetter("system"), Call(importlib.import_module, "os")), _touch(m)),
        "refused",
    ),
    ("partial", lambda m: Call(functools.partial(os.system, _touch(m))), "refused"),
    (
        "copyreg-known-class",
        lambda m: Call(copyreg._reconstructor, OrderedDict, dict, {"x": _touch(m)}),
        "refused",
    ),
    ("copyreg-own-class", lambda m: Call(copyreg._reconstructor, SetstateRunsCode, object, None), "loads"),
    ("setstate", lambda m: SetstateRunsCode(_touch(m)), "loads"),
    (
        "rebuild-from-type-calls-system",
        lambda m: Call(torch._tensor._rebuild_from_type_v2, os.system, torch.Tensor, (_touch(m),), {}),
        "refused",
    ),
    (
        "rebuild-tensor-placeholder-storage",
        lambda m: Call(
            torch._utils._rebuild_tensor_v2, Call(os.system, _touch(m)), 0, (3,), (1,), False, OrderedDict()
        ),
        "error",
    ),
]


def _save(obj: Any, path: Path, legacy: bool = False) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage deprecation, when a payload pickles a storage
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize(("make", "outcome"), [p[1:] for p in PAYLOADS], ids=[p[0] for p in PAYLOADS])
def test_payload_never_runs(tmp_path: Path, make: Callable[[Path], Any], outcome: str, legacy: bool) -> None:
    marker = tmp_path / "pwned"
    weights = torch.arange(6.0).reshape(2, 3)
    path = _save({"w": weights, "evil": make(marker)}, tmp_path / "crafted.pth", legacy)
    if outcome == "loads":
        loaded = safe_load.load(path)
        assert torch.equal(loaded.obj["w"], weights)
        assert placeholder_name(loaded.obj["evil"]) is not None and loaded.skipped
    else:
        with pytest.raises(UserError) as err:
            safe_load.load(path)
        msg = str(err.value)
        assert str(path) in msg and "\n" not in msg
        assert ("refused" in msg) == (outcome == "refused"), msg
    assert not marker.exists()


def test_placeholders_keep_what_the_file_said_and_do_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = _save(
        {"a": Call(os.system, _touch(marker)), "b": SetstateRunsCode(_touch(marker))}, tmp_path / "x.pth"
    )
    loaded = safe_load.load(path)
    a, b = loaded.obj["a"], loaded.obj["b"]
    assert isinstance(a, Placeholder) and (a.module, a.name) == (os.system.__module__, "system")
    assert a.args == (_touch(marker),)  # recorded, not run
    assert b.state == {"cmd": _touch(marker)} and placeholder_name(b) == f"{__name__}.SetstateRunsCode"
    assert loaded.skipped == {f"{os.system.__module__}.system": 1, f"{__name__}.SetstateRunsCode": 1}
    assert "skipped" in repr(a) and not callable(a)
    assert not marker.exists()


def test_hooks_in_a_file_are_dropped(tmp_path: Path) -> None:
    """torch.save never writes backward hooks; a file that carries one gets none (no call at backward)."""
    marker = tmp_path / "pwned"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage is deprecated, but it is what old files hold
        storage = torch.arange(3.0).storage()
    hooks = OrderedDict(h=Call(os.system, _touch(marker)))
    path = _save(
        {"t": Call(torch._utils._rebuild_tensor_v2, storage, 0, (3,), (1,), True, hooks)}, tmp_path / "h.pth"
    )
    t = safe_load.load(path).obj["t"]
    assert t._backward_hooks is None and t.requires_grad
    (t * 2).sum().backward()
    assert torch.equal(t.grad, torch.full((3,), 2.0)) and not marker.exists()


# --- raw pickles: opcodes no torch.save writes -------------------------------------------------------


def _global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def _str(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _zip_pickle(path: Path, data_pkl: bytes) -> Path:
    """A torch zip checkpoint whose data.pkl is exactly ``data_pkl``."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/version", "3\n")
    return path


P2 = pickle.PROTO + b"\x02"
RAW: dict[str, tuple[bytes, str]] = {
    # BUILD on a class object would rewrite torch.Tensor.__setstate__ for the whole process.
    "build-on-a-class": (
        P2 + _global("torch", "Tensor") + b"}" + _str("__setstate__") + _global("os", "system") + b"sb.",
        "sets the state of",
    ),
    "build-slots-on-a-function": (
        P2 + _global("torch._utils", "_rebuild_tensor_v2") + b"N}" + _str("__defaults__") + b")s\x86b.",
        "sets the state of",
    ),
    "newobj-on-a-tensor-class": (P2 + _global("torch", "Tensor") + b")\x81.", "creates torch.Tensor"),
    "call-a-placeholder-object": (
        P2 + _global("os", "system") + _str("x") + b"\x85R" + _str("touch") + b"\x85R.",
        "calls an object of skipped class os.system",
    ),
    "extension-code": (P2 + b"\x82\x01.", "extension codes"),
    "appends-to-a-size": (
        P2 + _global("torch", "Size") + b"]\x85R(K\x01e.",  # torch.Size([]) then APPENDS
        "appends to",
    ),
    "setitem-on-an-array": (
        P2 + _global("numpy", "ndarray") + b"K\x02\x85R" + b"K\x00K\x01s.",
        "sets items of",
    ),
    "codecs-other-encoding": (
        P2 + _global("_codecs", "encode") + _str("x") + _str("rot13") + b"\x86R.",
        "encodes str with codec 'rot13'",
    ),
}


@pytest.mark.parametrize("name", list(RAW))
def test_raw_opcodes_outside_the_table_are_refused(tmp_path: Path, name: str) -> None:
    data, expected = RAW[name]
    setstate, defaults = vars(torch.Tensor).get("__setstate__"), torch._utils._rebuild_tensor_v2.__defaults__
    path = _zip_pickle(tmp_path / f"{name}.pth", data)
    with pytest.raises(UserError, match="refused") as err:
        safe_load.load(path)
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert vars(torch.Tensor).get("__setstate__") is setstate  # nothing global was rewritten
    assert torch._utils._rebuild_tensor_v2.__defaults__ == defaults


def test_protocol_0_inst_becomes_a_placeholder(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    data = b"(" + b"V" + _touch(marker).encode() + b"\nios\nsystem\n."  # INST os.system(cmd)
    obj = safe_load.load(_zip_pickle(tmp_path / "inst.pth", data)).obj
    assert placeholder_name(obj) == "os.system" and obj.args == (_touch(marker),)
    assert not marker.exists()


def test_names_with_control_characters_stay_on_one_line(tmp_path: Path) -> None:
    data = P2 + _str("evil\nmodule") + _str("x") + pickle.STACK_GLOBAL + b")R."
    with pytest.raises(UserError) as err:
        load_checkpoint(_zip_pickle(tmp_path / "name.pth", data))
    assert "\n" not in str(err.value) and "holds a evil\\nmodule.x object" in str(err.value)


def test_legitimate_contents_round_trip(tmp_path: Path) -> None:
    """Everything a checkpoint legitimately holds comes back equal to ``torch.load``'s full unpickling."""
    sd = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).state_dict()
    obj = {
        "sd": sd, "param": torch.nn.Parameter(torch.ones(2)), "view": torch.arange(6.0).reshape(2, 3)[:, 1],
        "half": torch.ones(2, dtype=torch.float16), "bf16": torch.ones(2, dtype=torch.bfloat16),
        "dtype": torch.int8, "device": torch.device("cpu"), "size": torch.Size([2, 3]),
        "np": np.arange(4, dtype=np.int16), "np_obj": np.array([1, "x", None], dtype=object),
        "np_rec": np.zeros(2, dtype=[("a", "<f4"), ("b", "<i8")]), "np_f64": np.float64(2.5), "np_bool": np.bool_(True),
        "set": {1, 2}, "frozenset": frozenset({3}), "bytes": b"\x00\xff", "empty": b"", "complex": 1 + 2j,
        "bytearray": bytearray(b"q"), "counter": Counter("aab"), "tuple": (1, "x", None, 2.5), "rng": torch.get_rng_state(),
    }  # fmt: skip
    for legacy in (False, True):
        path = _save(obj, tmp_path / f"ok_{legacy}.pth", legacy)
        loaded, ref = safe_load.load(path), torch.load(path, weights_only=False)
        assert loaded.skipped == {}
        for k, want in ref.items():
            got = loaded.obj[k]
            assert type(got) is type(want), k
            if isinstance(want, torch.Tensor):
                assert torch.equal(got, want) and got.dtype == want.dtype, k
            elif isinstance(want, np.ndarray):
                assert got.dtype == want.dtype and got.tolist() == want.tolist(), k
            elif k == "sd":
                assert got._metadata == want._metadata and all(torch.equal(got[n], want[n]) for n in want)
            else:
                assert got == want, k


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"PK\x03\x04" + b"\x00" * 40, "truncated checkpoint"),
        (pickle.dumps({"a": 1}, protocol=2), "a pickle without torch.save's header"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "not a PyTorch checkpoint"),
    ],
    ids=["cut-zip", "plain-pickle", "png"],
)
def test_what_the_file_is_instead(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    with pytest.raises(UserError, match=match):
        safe_load.load(path)


def test_zip_that_is_not_a_checkpoint_and_torchscript(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(UserError, match=r"zip archive without data\.pkl"):
        safe_load.load(path)
    scripted = tmp_path / "scripted.pth"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated; such files still exist
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), scripted)
    with pytest.raises(UserError, match="TorchScript archive"):
        safe_load.load(scripted)  # torch.load would have handed it to torch.jit.load


def test_truncated_legacy_file(tmp_path: Path) -> None:
    path = _save({"w": torch.zeros(100), "meta": {"x": "y" * 200}}, tmp_path / "l.pth", legacy=True)
    data = path.read_bytes()
    path.write_bytes(data[:200])
    with pytest.raises(UserError, match="truncated checkpoint"):
        safe_load.load(path)


# --- mmengine / mmdet 3.x runner checkpoints, built without mmengine ------------------------------------


class HistoryBuffer:
    """Stand-in for mmengine.logging.history_buffer.HistoryBuffer: pickled by class, state in __dict__."""

    def __init__(self, log: list[float], count: list[int]) -> None:
        self.max_length = 1000000
        self._log_history = np.asarray(log, dtype=np.float64)
        self._count_history = np.asarray(count, dtype=np.int64)


class ConfigDict(dict):
    """Stand-in for mmengine.config.config.ConfigDict: a dict subclass (NEWOBJ + SETITEMS + BUILD)."""

    def __getstate__(self) -> dict[str, Any]:
        return {"_frozen": False}


MMENGINE_CLASSES = {
    "mmengine.logging.history_buffer": HistoryBuffer,
    "mmengine.config.config": ConfigDict,
}


@contextlib.contextmanager
def _mmengine_importable_for_pickle() -> Iterator[None]:
    """Lets pickle save the stand-ins under mmengine's module paths; gone again before anything loads."""
    added: list[str] = []
    saved = {c: (c.__module__, c.__qualname__) for c in MMENGINE_CLASSES.values()}
    try:
        for module, cls in MMENGINE_CLASSES.items():
            parts = module.split(".")
            for i in range(1, len(parts) + 1):
                name = ".".join(parts[:i])
                if name not in sys.modules:
                    sys.modules[name] = types.ModuleType(name)
                    added.append(name)
            cls.__module__ = module
            setattr(sys.modules[module], cls.__name__, cls)
        yield
    finally:
        for name in added:
            del sys.modules[name]
        for cls, (module, qualname) in saved.items():
            cls.__module__, cls.__qualname__ = module, qualname


def mmengine_checkpoint(golden: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """What mmengine's ``Runner.save_checkpoint`` writes for mmdet 3.x, around the golden weights."""
    sd = golden["state_dict"]
    first = next(iter(sd))
    train_cfg = ConfigDict(type="EpochBasedTrainLoop", max_epochs=210, val_interval=1)
    return {
        "meta": {
            **golden["meta"],
            "seed": np.int64(2024),  # numpy scalars inside meta
            "experiment_name": "cornernet_hourglass104_8xb6-210e-mstest_coco_20240101_120000",
            "time": "20240101_120000",
            "mmengine_version": "0.10.4",
            "epoch": 12,
            "iter": 3000,
        },
        "state_dict": sd,
        "message_hub": {
            "log_scalars": {
                "train/loss": HistoryBuffer([3.5, 3.1, 2.9], [1, 1, 1]),
                "train/lr": HistoryBuffer([5e-4, 5e-4], [1, 1]),
                "train/time": HistoryBuffer([0.8], [1]),
            },
            "runtime_info": {
                "epoch": 12,
                "iter": 3000,
                "max_iters": 52500,
                "loop_stage": "train",
                "train_cfg": train_cfg,
                "last_loss": np.float64(2.9),
                "dataset_meta": golden["meta"].get("dataset_meta"),
            },
            "resumed_keys": {"epoch": True, "iter": True, "train/loss": True},
        },
        "optimizer": {
            "state": {
                0: {
                    "step": torch.tensor(3000.0),
                    "exp_avg": torch.zeros_like(sd[first]),
                    "exp_avg_sq": torch.zeros_like(sd[first]),
                }
            },
            "param_groups": [
                {
                    "lr": 5e-4,
                    "betas": (0.9, 0.999),
                    "eps": 1e-8,
                    "weight_decay": 0,
                    "amsgrad": False,
                    "foreach": None,
                    "maximize": False,
                    "capturable": False,
                    "differentiable": False,
                    "fused": None,
                    "params": [0],
                }
            ],
            "loss_scaler": {
                "scale": 512.0,
                "growth_factor": 2.0,
                "backoff_factor": 0.5,
                "growth_interval": 2000,
                "_growth_tracker": 0,
            },
        },
        "param_schedulers": [
            {
                "start_factor": 1 / 3,
                "end_factor": 1.0,
                "begin": 0,
                "end": 500,
                "by_epoch": False,
                "last_step": 3000,
                "base_values": [5e-4],
                "_global_step": 3000,
                "verbose": False,
                "_last_value": [5e-4],
            },
            {
                "milestones": Counter({180: 1}),
                "gamma": 0.1,
                "begin": 0,
                "end": 210,
                "by_epoch": True,
                "last_step": 12,
                "base_values": [5e-4],
                "verbose": False,
                "_last_value": [5e-4],
            },
        ],
        **extra,
    }


@pytest.fixture(scope="module")
def golden(golden_dir: Path) -> dict[str, Any]:
    return torch.load(golden_dir / "mmdet_checkpoint.pth", map_location="cpu", weights_only=True)


def write_mmengine_checkpoint(path: Path, golden: dict[str, Any], **extra: Any) -> Path:
    with _mmengine_importable_for_pickle():
        _save(mmengine_checkpoint(golden, **extra), path)
    assert "mmengine" not in sys.modules
    return path


def test_mmengine_runner_checkpoint_loads_without_mmengine(
    golden_dir: Path, golden: dict, tmp_path: Path
) -> None:
    path = write_mmengine_checkpoint(tmp_path / "epoch_12.pth", golden)
    with pytest.raises(pickle.UnpicklingError):  # what torch's own safe mode says about it
        torch.load(path, weights_only=True)
    with pytest.warns(UserWarning, match=r"mmengine\.logging\.history_buffer\.HistoryBuffer x3") as rec:
        ckpt = load_checkpoint(path)
    assert "mmengine.config.config.ConfigDict" in str(rec[0].message)
    assert "mmengine" not in sys.modules  # nothing was imported by name
    clean = load_checkpoint(golden_dir / "mmdet_checkpoint.pth")
    assert ckpt.source == clean.source == "mmdet3"
    assert ckpt.model_config == clean.model_config and ckpt.meta == clean.meta
    assert ckpt.state_dict.keys() == clean.state_dict.keys()
    assert all(torch.equal(ckpt.state_dict[k], clean.state_dict[k]) for k in clean.state_dict)

    # What the placeholders kept: the HistoryBuffer state, the ConfigDict items; numpy values intact.
    obj = safe_load.load(path).obj
    loss = obj["message_hub"]["log_scalars"]["train/loss"]
    assert placeholder_name(loss) == "mmengine.logging.history_buffer.HistoryBuffer"
    np.testing.assert_array_equal(loss.state["_log_history"], [3.5, 3.1, 2.9])
    cfg = obj["message_hub"]["runtime_info"]["train_cfg"]
    assert cfg.dict_items == {"type": "EpochBasedTrainLoop", "max_epochs": 210, "val_interval": 1}
    assert cfg.state == {"_frozen": False}
    assert obj["meta"]["seed"] == 2024 and type(obj["meta"]["seed"]) is np.int64
    assert obj["param_schedulers"][1]["milestones"] == Counter({180: 1})
    assert torch.equal(obj["optimizer"]["state"][0]["step"], torch.tensor(3000.0))


def test_checkpoint_errors_name_the_skipped_class(tmp_path: Path, golden: dict) -> None:
    whole_model = _save(Call(HistoryBuffer, [1.0], [1]), tmp_path / "model.pth")  # torch.save(model) style
    with pytest.raises(
        UserError, match=rf"holds a {__name__}\.HistoryBuffer object \(a class this loader does not"
    ):
        load_checkpoint(whole_model)
    bad_sd = _save({"meta": {}, "state_dict": HistoryBuffer([1.0], [1])}, tmp_path / "sd.pth")
    with pytest.raises(UserError, match=r"its state_dict is a .*HistoryBuffer object .*skipped, never run"):
        load_checkpoint(bad_sd)
    sd = dict(golden["state_dict"])
    sd["backbone.extra"] = HistoryBuffer([1.0], [1])
    bad_entry = _save({"meta": golden["meta"], "state_dict": sd}, tmp_path / "entry.pth")
    with pytest.raises(UserError, match=r"state_dict entry 'backbone.extra' holds a .*HistoryBuffer object"):
        load_checkpoint(bad_entry)


# --- every command that reads checkpoints ------------------------------------------------------------


@pytest.fixture(scope="module")
def files(golden_dir: Path, golden: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A crafted mmengine-style checkpoint whose payloads load as placeholders, one whose payload is
    refused, the marker they would create, and a one-image COCO set."""
    root = tmp_path_factory.mktemp("crafted")
    marker = root / "pwned"
    loads = write_mmengine_checkpoint(
        root / "loads.pth",
        golden,
        evil=[Call(os.system, _touch(marker)), Call(builtins.exec, _open_code(marker))],
    )
    refused = _save({**golden, "evil": PAYLOADS[3][1](marker)}, root / "refused.pth")
    coco = json.loads((golden_dir / "coco" / "annotations.json").read_text())
    present = [im for im in coco["images"] if (golden_dir / "coco" / "images" / im["file_name"]).is_file()]
    image = min(present, key=lambda im: im["height"] * im["width"])
    ann = root / "one_image.json"
    ann.write_text(json.dumps({**coco, "images": [image],
                               "annotations": [a for a in coco["annotations"] if a["image_id"] == image["id"]]}))  # fmt: skip
    return {"loads": loads, "refused": refused, "marker": marker, "ann": ann,
            "images": golden_dir / "coco" / "images", "image": golden_dir / "coco" / "images" / image["file_name"],
            "clean": golden_dir / "mmdet_checkpoint.pth"}  # fmt: skip


def _one_line_error(capsys: pytest.CaptureFixture[str], path: Path, what: str) -> None:
    """The command ended with one ``error:`` line (progress lines before it are fine), no traceback."""
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1] if err else ""
    assert last.startswith("error: ") and str(path) in last and what in last, err
    assert err.count("error") == 1 and "Traceback" not in err, err


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_eval(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from runtime import eval as eval_cli

    def run(model: Path, out: Path) -> int:
        return eval_cli.main([str(model), "--ann", str(files["ann"]), "--images", str(files["images"]),
                              "--device", "cpu", "--workers", "1", "--no-progress", "--out", str(out)])  # fmt: skip

    with pytest.warns(UserWarning, match=r"HistoryBuffer x3") as rec:
        assert run(files["loads"], tmp_path / "crafted.json") == 0
    assert f"{os.system.__module__}.system" in str(rec[0].message) and "builtins.exec" in str(rec[0].message)
    assert run(files["clean"], tmp_path / "clean.json") == 0
    crafted, clean = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("crafted", "clean"))
    assert crafted == clean and len(clean) > 0  # same weights and settings, same detections
    capsys.readouterr()
    assert run(files["refused"], tmp_path / "refused.json") == 2
    _one_line_error(capsys, files["refused"], "refused")
    assert not files["marker"].exists()


def test_detect(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from runtime import detect

    with pytest.warns(UserWarning, match="HistoryBuffer"):
        assert (
            detect.main(
                [str(files["loads"]), str(files["image"]), "--out-dir", str(tmp_path), "--device", "cpu"]
            )
            == 0
        )
    assert [p.name for p in tmp_path.iterdir()] == [files["image"].name]
    capsys.readouterr()
    assert detect.main([str(files["refused"]), str(files["image"]), "--out-dir", str(tmp_path / "r")]) == 2
    _one_line_error(capsys, files["refused"], "refused")
    assert not files["marker"].exists()


class _Loaded(Exception):
    pass


def _stop_at_onnx_export(monkeypatch: pytest.MonkeyPatch) -> list[torch.nn.Module]:
    """Replace the (slow) ONNX conversion: the checkpoint has been loaded and the model built by then."""
    import export.onnx_export

    models: list[torch.nn.Module] = []

    def stop(model: torch.nn.Module, *args: Any, **kwargs: Any) -> None:
        models.append(model)
        raise UserError("stopped after loading the checkpoint")

    monkeypatch.setattr(export.onnx_export, "model_to_onnx", stop)
    return models


def test_to_onnx(
    files: dict[str, Path], golden: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from export import to_onnx

    models = _stop_at_onnx_export(monkeypatch)
    with pytest.warns(UserWarning, match="HistoryBuffer"):
        assert to_onnx.main([str(files["loads"]), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "stopped after loading" in capsys.readouterr().err
    got = models[0].state_dict()
    assert all(torch.equal(got[k], v) for k, v in golden["state_dict"].items())
    assert to_onnx.main([str(files["refused"]), "--out", str(tmp_path / "r.onnx")]) == 2
    _one_line_error(capsys, files["refused"], "refused")
    assert len(models) == 1 and not files["marker"].exists()


def test_to_trt(
    files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without TensorRT the command stops at its import, before reading the checkpoint; with the CPU
    stand-ins it reads it (through the ONNX export) with the same safe loader."""
    from export import to_trt

    from . import trt_fakes

    real_trt = importlib.util.find_spec("tensorrt") is not None
    if not real_trt:
        assert to_trt.main([str(files["loads"]), "--out", str(tmp_path / "a.plan")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and "TensorRT" in err, err
    import runtime.cuda_env as cuda_env

    cudart = trt_fakes.FakeCudart()
    trt_fakes.install(monkeypatch, trt_fakes.make_fake_trt("10.16.1.11", cudart), cudart)
    monkeypatch.setattr(cuda_env, "_LOGGER", None)
    _stop_at_onnx_export(monkeypatch)
    with pytest.warns(UserWarning, match="HistoryBuffer"):
        assert to_trt.main([str(files["loads"]), "--out", str(tmp_path / "b.plan")]) == 2
    assert "stopped after loading" in capsys.readouterr().err
    assert to_trt.main([str(files["refused"]), "--out", str(tmp_path / "c.plan")]) == 2
    _one_line_error(capsys, files["refused"], "refused")
    assert not files["marker"].exists() and not list(tmp_path.glob("*.plan"))


def test_train_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trainer import train
    from trainer.data import synthetic

    coco = synthetic.generate(tmp_path / "synth", 4, 1, seed=3)["root"]
    out, marker = tmp_path / "run", tmp_path / "pwned"
    args = ["--preset", "tiny", "--gpus", "0", "--coco", str(coco), "--out-dir", str(out), "--batch", "2",
            "--crop", "127", "--epochs", "1", "--eval-interval", "0", "--workers", "0", "--no-progress", "--keep", "0"]  # fmt: skip
    assert train.main([*args, "--max-iters", "1"]) == 0
    state = safe_load.load(out / "iter_1.pth").obj
    crafted = _save({**state, "evil": Call(os.system, _touch(marker))}, tmp_path / "crafted.pth")
    refused = _save({**state, "evil": PAYLOADS[3][1](marker)}, tmp_path / "refused.pth")
    capsys.readouterr()
    with pytest.warns(UserWarning, match=rf"{os.system.__module__}\.system"):
        assert train.main([*args, "--max-iters", "2", "--resume", str(crafted)]) == 0
    err = capsys.readouterr().err
    assert f"{crafted} at epoch" in err and "iteration 1" in err, err  # resumed from its weights and state
    assert load_checkpoint(out / (out / "last_checkpoint").read_text().strip()).extra["iteration"] == 2
    assert train.main([*args, "--max-iters", "2", "--resume", str(refused)]) == 2
    _one_line_error(capsys, refused, "refused")
    assert not marker.exists()
