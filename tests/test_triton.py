"""Serving on a real Triton server: repositories from ``export.to_triton``, ``runtime.serve``, ``TritonClient``.

One server (loopback, free ports) serves two repositories' worth of models for the whole module: the
golden ONNX (exported here with ``python -m export.to_onnx``) and the golden ``.pth``, both through our
runtime backends inside Triton's Python backend (the only backend in pytriton's server build). It is
stopped at the end and no process of it may be left. Skips only when no ``tritonserver`` binary exists.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from export import to_onnx, to_triton
from export.to_triton import RepoOptions, write_repository
from runtime.decode import Detections
from runtime.detector import Detector
from runtime.errors import UserError
from runtime.matching import match_detections
from runtime.serve import (
    TritonServer,
    check_repository,
    find_tritonserver,
    free_port,
    setup_stub_site,
    stub_needs_numpy1,
)

ROOT = Path(__file__).resolve().parents[1]


def _install() -> object:
    try:
        return find_tritonserver()
    except UserError as e:
        pytest.skip(f"no Triton server binary: {e}")


@pytest.fixture(scope="module")
def golden_onnx(golden_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("triton_onnx") / "golden.onnx"
    assert to_onnx.main([str(golden_dir / "mmdet_checkpoint.pth"), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def repo(golden_onnx: Path, golden_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("triton_repo") / "models"
    # a short queue delay makes the concurrency test's batches certain, not a matter of timing
    args = ["--repo", str(repo), "--net-backend", "python", "--pre-post-instances", "1"]
    assert to_triton.main([str(golden_onnx), *args, "--name", "onnx", "--queue-delay-us", "20000"]) == 0
    assert to_triton.main([str(golden_dir / "mmdet_checkpoint.pth"), *args, "--name", "pth"]) == 0
    return repo


@pytest.fixture(scope="module")
def stub_ready() -> None:
    _install()
    if stub_needs_numpy1():
        setup_stub_site()  # what tests/run.sh does with python -m runtime.serve --setup


@pytest.fixture(scope="module")
def server(repo: Path, stub_ready: None) -> Iterator[TritonServer]:
    srv = TritonServer(repo, ready_timeout_s=240)
    with srv:
        assert srv.alive_processes(), "the server should be running"
        yield srv
    assert srv.proc is not None and srv.proc.returncode is not None
    assert srv.alive_processes() == [], "the server or one of its stubs outlived stop()"


def _address(server: TritonServer, protocol: str, name: str) -> str:
    return f"{protocol}://{server.http_url if protocol == 'http' else server.grpc_url}/{name}"


def _golden_images(golden_dir: Path) -> list[Path]:
    return sorted((golden_dir / "coco" / "images").iterdir())


@pytest.fixture(scope="module")
def in_process(golden_onnx: Path, golden_dir: Path) -> dict[str, list[Detections]]:
    """Detections of every golden image from the in-process Detector, per model file."""
    refs = {}
    for name, model in (("onnx", golden_onnx), ("pth", golden_dir / "mmdet_checkpoint.pth")):
        with Detector(model, device="cpu") as det:
            refs[name] = [r.detections() for r in det(_golden_images(golden_dir))]
    return refs


# -- the served detections ---------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("name", ["onnx", "pth"])
def test_golden_images_equal_in_process(
    server: TritonServer, in_process: dict[str, list[Detections]], golden_dir: Path, name: str, protocol: str
) -> None:
    from runtime.backends.triton import TritonClient

    with TritonClient(_address(server, protocol, name)) as client:
        assert client.meta.classes == ("shape0", "shape1", "shape2")
        assert client.info["source_sha256"] and client.info["precision"] == "fp32"
        for path, ref in zip(_golden_images(golden_dir), in_process[name], strict=True):
            got = client.detect(path.read_bytes())
            m = match_detections(ref, got)
            assert m.ok and m.rate == 1.0, f"{path.name} over {protocol}: {m}"
            assert len(ref) > 0


def test_detector_on_a_served_address(server: TritonServer, in_process: dict[str, list[Detections]], golden_dir: Path) -> None:
    with Detector(_address(server, "grpc", "onnx")) as det:
        assert det.meta.classes == ("shape0", "shape1", "shape2")
        results = list(det.stream(_golden_images(golden_dir)))
    for r, ref in zip(results, in_process["onnx"], strict=True):
        assert match_detections(ref, r.detections()).rate == 1.0


def test_eval_verify_on_a_served_address(server: TritonServer, golden_dir: Path, tmp_path: Path) -> None:
    """The issue's proof that serving changed nothing: runtime.eval on the address, verified against the checkpoint."""
    import json

    from runtime import eval as eval_cmd

    report = tmp_path / "report.json"
    coco = ["--ann", str(golden_dir / "coco" / "annotations.json"), "--images", str(golden_dir / "coco" / "images")]
    ckpt = str(golden_dir / "mmdet_checkpoint.pth")
    assert eval_cmd.main([_address(server, "grpc", "onnx"), *coco, "--verify", ckpt, "--report", str(report)]) == 0
    r = json.loads(report.read_text())
    assert r["backend"] == "triton" and r["verify"]["passed"]
    assert r["backend_info"]["source_sha256"] == r["verify"]["reference_sha256"]
    matched = next(c for c in r["verify"]["criteria"] if c["name"] == "detections")
    assert matched["measured"] == 1.0 and r["stats"]["AP"] > 0.3


def _crops(golden_dir: Path, n: int) -> list[bytes]:
    """``n`` different PNGs of one size (one padded shape, so Triton may batch them)."""
    images = [cv2.imread(str(p)) for p in _golden_images(golden_dir)]
    out = []
    for i in range(n):
        img = images[i % len(images)]
        y, x = 20 * (i // len(images)), 30 * (i // len(images))
        ok, buf = cv2.imencode(".png", img[y : y + 120, x : x + 200])
        assert ok
        out.append(buf.tobytes())
    return out


def _net_counts(client: object, model: str) -> tuple[int, int]:
    stats = client.statistics(model)["model_stats"][0]  # type: ignore[attr-defined]
    return int(stats["inference_count"]), int(stats["execution_count"])


def test_concurrent_clients_equal_serial_and_batch(server: TritonServer, golden_dir: Path) -> None:
    from runtime.backends.triton import TritonClient

    images = _crops(golden_dir, 8)
    client = TritonClient(_address(server, "grpc", "onnx"))
    serial = [client.detect(b) for b in images]
    inf0, exe0 = _net_counts(client, "onnx_net")
    errors: list[str] = []
    results: dict[tuple[int, int], Detections] = {}

    def worker(t: int) -> None:
        # half the clients over HTTP, half over gRPC; each its own TritonClient and thread-local connection
        c = TritonClient(_address(server, "http" if t % 2 else "grpc", "onnx"))
        try:
            for i in range(25):
                try:
                    results[(t, i)] = c.detect(images[(t + i) % len(images)])
                except Exception as e:
                    errors.append(f"client {t} request {i}: {e}")
        finally:
            c.close()

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=300)
    assert not any(th.is_alive() for th in threads), "a client thread did not finish in 300 s"
    assert errors == []
    assert len(results) == 200
    for (t, i), got in results.items():
        m = match_detections(serial[(t + i) % len(images)], got)
        assert m.ok and m.rate == 1.0, f"client {t} request {i}: {m}"
    inf1, exe1 = _net_counts(client, "onnx_net")
    client.close()
    assert inf1 - inf0 == 200
    assert exe1 - exe0 < inf1 - inf0, f"no batches formed: {exe1 - exe0} executions for {inf1 - inf0} inferences"


# -- bad requests ---------------------------------------------------------------------------------------------


def _png(h: int, w: int) -> bytes:
    ok, buf = cv2.imencode(".png", np.full((h, w, 3), 90, np.uint8))
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_images_get_errors_and_the_server_keeps_answering(
    server: TritonServer, golden_dir: Path, protocol: str, tmp_path: Path
) -> None:
    from runtime.backends.triton import TritonClient

    good = _golden_images(golden_dir)[1].read_bytes()
    bad = {
        b"": "image is empty (0 bytes)",
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 64: "not a decodable image",  # a PNG signature, then garbage
        good[: len(good) // 3]: "not a decodable image",  # truncated
        (ROOT / "README.md").read_bytes(): "not a decodable image",  # not an image at all
        _png(4000, 4000): "4000x4000 (h x w) is larger than this model serves (2047x2047)",
    }
    with TritonClient(_address(server, protocol, "onnx")) as client:
        want = client.detect(good)
        for data, message in bad.items():
            with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
                client.detect(data)
            assert match_detections(want, client.detect(good)).rate == 1.0
        # a 1x1 image is served (a 127x127 canvas is within every model's shapes): well-formed, maybe empty
        tiny = client.detect(_png(1, 1))
        assert tiny.boxes.shape == (len(tiny), 4) and tiny.labels.dtype == np.int64
        assert np.all(np.isfinite(tiny.boxes)) and np.all(np.isfinite(tiny.scores))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_wrong_input_name_type_and_shape_get_errors(server: TritonServer, golden_dir: Path, protocol: str) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    from runtime.backends.triton import TritonClient

    mod = grpcclient if protocol == "grpc" else httpclient
    raw = mod.InferenceServerClient(server.grpc_url if protocol == "grpc" else server.http_url)
    good = _golden_images(golden_dir)[1].read_bytes()

    def request(name: str, dtype: str, array: np.ndarray) -> object:
        x = mod.InferInput(name, list(array.shape), dtype)
        x.set_data_from_numpy(array)
        return raw.infer("onnx", [x])

    cases = [
        ("picture", "BYTES", np.array([[good]], dtype=object), "unexpected inference input 'picture'"),
        ("image", "FP32", np.zeros((1, 1), np.float32), "data-type is 'FP32', but model 'onnx' expects 'BYTES'"),
        ("image", "BYTES", np.array([[good], [good]], dtype=object), "batch-size must be <= 1"),
        ("image", "BYTES", np.array([[good, good]], dtype=object), "unexpected shape for input 'image'"),
    ]
    with TritonClient(_address(server, protocol, "onnx")) as client:
        want = client.detect(good)
        for name, dtype, array, message in cases:
            with pytest.raises(InferenceServerException, match=message):
                request(name, dtype, array)
            assert match_detections(want, client.detect(good)).rate == 1.0
    raw.close()


def test_client_errors_are_one_line(server: TritonServer) -> None:
    from runtime.backends.triton import TritonClient

    cases = {
        "grpc:/127.0.0.1:8001/onnx": "not a served model's address",
        "ftp://127.0.0.1:8001/onnx": "not a served model's address",
        f"http://127.0.0.1:{free_port()}/onnx": "no Triton server answers",
        f"grpc://127.0.0.1:{free_port()}/onnx": "no Triton server answers",
        _address(server, "grpc", "nothing"): "the server has no model 'nothing'",
        _address(server, "http", "onnx_net"): "not written by python -m export.to_triton",
    }
    for address, message in cases.items():
        with pytest.raises(UserError, match=message) as e:
            TritonClient(address, timeout_s=10)
        assert "\n" not in str(e.value)


# -- repositories that this server cannot run ------------------------------------------------------------


def _fake_engine(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in engine + sidecar + plugin library (the files export.to_triton reads; TensorRT never runs)."""
    from runtime.engine_sidecar import GpuInfo, PluginInfo, ShapeProfile, Sidecar, SourceInfo, TensorSpec
    from runtime.meta import ModelMeta, sha256_file

    plugin = tmp_path / "libcornerpool_trt.so"
    plugin.write_bytes(b"\x7fELF stand-in")
    engine = tmp_path / "m.plan"
    engine.write_bytes(b"stand-in engine bytes")
    k = 100
    outputs = tuple(
        TensorSpec(n, "int32" if n.endswith("inds") else "float32", (-1, k, 2) if n.endswith("offs") else (-1, k))
        for n in ("tl_scores", "tl_inds", "tl_embs", "tl_offs", "br_scores", "br_inds", "br_embs", "br_offs")
    )
    Sidecar(
        engine_file=engine.name,
        engine_bytes=engine.stat().st_size,
        engine_sha256=sha256_file(engine),
        precision="fp16",
        inputs=(TensorSpec("images", "float32", (-1, 3, -1, -1)),),
        outputs=outputs,
        profile=ShapeProfile("images", (1, 3, 127, 127), (4, 3, 511, 767), (4, 3, 767, 1023)),
        meta=ModelMeta(classes=("a", "b")),
        tensorrt_version="10.16.1.11",
        gpu=GpuInfo("NVIDIA H200", "9.0"),
        plugin=PluginInfo(
            library=str(plugin), name="CornerPool", version="1", namespace="cornernet", sources_sha256="a" * 64, layers=8
        ),
        source=SourceInfo("/ckpt/m.pth", "c" * 64, "/ckpt/m.onnx", "d" * 64),
    ).write(f"{engine}.json")
    return engine, plugin


def test_plan_repository_config_parses_with_tritons_schema(tmp_path: Path) -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    engine, plugin = _fake_engine(tmp_path)
    repo = tmp_path / "models"
    assert to_triton.main([str(engine), "--repo", str(repo), "--max-batch", "16", "--preferred-batch", "2", "4"]) == 0
    configs = {}
    for path in sorted(repo.glob("*/config.pbtxt")):
        configs[path.parent.name] = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    assert set(configs) == {"cornernet", "cornernet_pre", "cornernet_net", "cornernet_post"}
    net = configs["cornernet_net"]
    assert net.platform == "tensorrt_plan" and net.max_batch_size == 4  # the profile's limit, not 16
    assert list(net.dynamic_batching.preferred_batch_size) == [2, 4]
    assert [o.name for o in net.output][1] == "tl_inds" and net.output[1].data_type == model_config_pb2.TYPE_INT32
    assert net.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert (repo / "cornernet_net" / "1" / "model.plan").read_bytes() == engine.read_bytes()
    assert (repo / "cornernet_net" / "plugins" / plugin.name).read_bytes() == plugin.read_bytes()
    ens = configs["cornernet"]
    assert ens.platform == "ensemble" and [s.model_name for s in ens.ensemble_scheduling.step] == [
        "cornernet_pre",
        "cornernet_net",
        "cornernet_post",
    ]
    assert ens.input[0].data_type == model_config_pb2.TYPE_STRING
    assert [o.name for o in ens.output] == ["boxes", "scores", "labels"]
    assert configs["cornernet_pre"].parameters["cornernet.max_image_hw"].string_value == "767,1023"
    info = ens.parameters["cornernet.info"].string_value
    assert '"precision": "fp16"' in info and '"source_sha256": "' + "c" * 64 in info
    assert (repo / "cornernet" / "labels.txt").read_text() == "a\nb\n"
    readme = (repo / "README.md").read_text()
    assert "--backend-config=tensorrt,plugins=/models/cornernet_net/plugins/libcornerpool_trt.so" in readme
    assert "LD_PRELOAD" in readme and "curl" in readme and "tritonclient" in readme


def test_plan_repository_loads_where_the_server_has_tensorrt(tmp_path: Path) -> None:
    install = _install()
    engine, _ = _fake_engine(tmp_path)
    write_repository(engine, tmp_path / "models", RepoOptions())
    if "tensorrt" not in install.backends:  # type: ignore[attr-defined]
        with pytest.raises(UserError, match="needs Triton's 'tensorrt' backend"):
            check_repository(tmp_path / "models", install)  # type: ignore[arg-type]
        pytest.skip("this tritonserver (nvidia-pytriton's build) has no TensorRT backend; it is in NVIDIA's containers")
    check_repository(tmp_path / "models", install)  # type: ignore[arg-type]


def test_to_triton_bad_usage_exits_2(golden_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "mine_net").mkdir()
    (tmp_path / "mine_net" / "config.pbtxt").write_text('name: "mine_net"\n')
    cases = [
        ([str(golden_onnx), "--repo", str(tmp_path), "--name", "a/b"], "--name"),
        ([str(golden_onnx), "--repo", str(tmp_path), "--net-backend", "tensorrt"], "runs .plan files only"),
        ([str(golden_onnx), "--repo", str(tmp_path), "--name", "mine"], "was not written by export.to_triton"),
        ([str(golden_onnx), "--repo", str(tmp_path), "--max-batch", "0"], "at least 1"),
        ([str(tmp_path / "none.onnx"), "--repo", str(tmp_path)], "model file not found"),
    ]
    for argv, message in cases:
        assert to_triton.main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_missing_server_binary_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"pip install --no-deps nvidia-pytriton==0\.7\.0"):
        find_tritonserver()


def test_serve_command_stops_on_sigterm_leaving_nothing(repo: Path, tmp_path: Path, stub_ready: None) -> None:
    """``python -m runtime.serve``: ready, endpoints printed, SIGTERM ends it and every process it started."""
    small = tmp_path / "models"
    small.mkdir()
    for d in repo.glob("pth*"):  # one model set keeps this second server quick
        os.symlink(d, small / d.name)
    ports = [str(free_port()) for _ in range(3)]
    cmd = [sys.executable, "-m", "runtime.serve", str(small), "--http-port", ports[0], "--grpc-port", ports[1]]
    proc = subprocess.Popen(
        [*cmd, "--metrics-port", ports[2], "--timeout", "240"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        lines = []
        deadline = time.monotonic() + 260
        while time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith("Ctrl-C"):
                break
        text = "".join(lines)
        assert f"grpc://127.0.0.1:{ports[1]}/pth" in text, text
        children = _descendants(proc.pid)
        assert children, "the server process should be running under runtime.serve"
        from runtime.backends.triton import TritonClient

        with TritonClient(f"http://127.0.0.1:{ports[0]}/pth") as c:
            assert c.meta.classes == ("shape0", "shape1", "shape2")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert "stopping" in proc.stdout.read()  # type: ignore[union-attr]
        time.sleep(0.5)
        assert [p for p in children if _alive(p)] == [], "processes outlived runtime.serve"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        found += kids
        frontier += kids
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_plan_without_its_plugin_library_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    engine, _ = _fake_engine(tmp_path)
    monkeypatch.setenv("CORNERNET_TRT_PLUGIN", str(tmp_path / "missing.so"))
    assert to_triton.main([str(engine), "--repo", str(tmp_path / "models")]) == 2
    assert "missing.so, which does not exist" in capsys.readouterr().err
    assert not (tmp_path / "models").exists()  # nothing half-written
