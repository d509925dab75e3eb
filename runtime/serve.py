"""``python -m runtime.serve REPO``: run Triton Inference Server on 127.0.0.1 for a repository from ``export.to_triton``.

Examples::

    python -m runtime.serve --setup                        # once: numpy<2 for the Python backend stub
    python -m runtime.serve models/                        # http :8000, grpc :8001, metrics :8002
    python -m runtime.serve models/ --http-port 9000 --grpc-port 9001 --metrics-port 9002
    python -m runtime.eval grpc://127.0.0.1:8001/cornernet --coco data/coco   # from another shell

Uses the ``tritonserver`` on PATH (NVIDIA's container), else the one inside the ``nvidia-pytriton`` wheel
(``pip install --no-deps nvidia-pytriton==0.7.0``: only its server binary is used, and ``--no-deps`` keeps
its numpy<2 pin off this environment). That build has Triton's Python backend only, so repositories for
it are written with ``--net-backend python``. Its backend stub is compiled against numpy 1.x (with numpy 2
it misreads every array), so the stub runs in a small environment that layers numpy<2 over this one:
``--setup`` installs it. Waits until the server is ready, prints the endpoints, and stops it (and every
process it started) on Ctrl-C or SIGTERM.

Exit codes: 0 stopped cleanly, 1 the server failed, 2 bad usage or unreadable input.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import venv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from runtime.cli import parser_from_doc, run_cli
from runtime.errors import EXIT_CHECK_FAILED, EXIT_OK, UserError

HOST = "127.0.0.1"
STUB_NUMPY = "numpy==1.26.4"  # what pytriton 0.7.0's Python backend stub is built against (numpy<2)
STUB_SITE_ENV = "CORNERNET_TRITON_STUB_SITE"
PYTRITON_INSTALL = "pip install --no-deps nvidia-pytriton==0.7.0"
PY = f"{sys.version_info.major}.{sys.version_info.minor}"


@dataclass(frozen=True)
class TritonInstall:
    """Where the server binary is, and what the pytriton build needs around it."""

    binary: Path
    pytriton: Path | None  # the wheel's ``pytriton/tritonserver`` folder; None for a container's server
    lib_dirs: tuple[Path, ...] = ()

    @property
    def backends(self) -> set[str]:
        """Backends this server can load (ensembles are part of the core)."""
        root = self.pytriton / "backends" if self.pytriton else Path("/opt/tritonserver/backends")
        found = {p.name for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()
        return found if self.pytriton else found or {"python", "onnxruntime", "tensorrt"}


def find_tritonserver() -> TritonInstall:
    """``tritonserver`` on PATH, else the one in the installed ``nvidia-pytriton`` wheel (never imported)."""
    on_path = shutil.which("tritonserver")
    if on_path:
        return TritonInstall(Path(on_path), None)
    spec = importlib.util.find_spec("pytriton")
    if spec and spec.submodule_search_locations:
        root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
        binary = root / "bin" / "tritonserver"
        if binary.is_file():
            libs = root.parent.parent / "nvidia_pytriton.libs"
            return TritonInstall(binary, root, (libs, Path(sysconfig.get_config_var("LIBDIR") or sys.prefix + "/lib")))
    raise UserError(
        f"no Triton server found: neither 'tritonserver' on PATH nor the nvidia-pytriton wheel; {PYTRITON_INSTALL} "
        "(--no-deps: only its server binary is used and it pins numpy<2), or run in NVIDIA's tritonserver container"
    )


# -- the Python backend stub's environment --------------------------------------------------------------


def stub_site_dir() -> Path:
    """Where ``--setup`` puts numpy<2 for the stub: ``$CORNERNET_TRITON_STUB_SITE`` or a per-user cache."""
    if os.environ.get(STUB_SITE_ENV):
        return Path(os.environ[STUB_SITE_ENV])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "cornernet-deploy" / f"triton-stub-site-py{PY}"


def stub_needs_numpy1() -> bool:
    import numpy

    return int(numpy.__version__.split(".")[0]) >= 2


def setup_stub_site(quiet: bool = True) -> Path:
    """Install numpy<2 into :func:`stub_site_dir` (idempotent); only the stub's Python sees it."""
    target = stub_site_dir()
    if (target / "numpy" / "__init__.py").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".stub-site-", dir=target.parent))
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(tmp), STUB_NUMPY]
    try:
        done = subprocess.run(cmd, capture_output=quiet, text=True, timeout=600)
        if done.returncode != 0:
            tail = (done.stderr or "").strip().splitlines()[-1:] if quiet else []
            raise UserError(f"could not install {STUB_NUMPY} into {target} ({' '.join(tail) or 'pip failed'}); check pip's access to PyPI")
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _project_root() -> Path:
    """The folder holding the ``runtime`` package this process runs (the stub must import the same one)."""
    return Path(__file__).resolve().parent.parent


def prepare_runtime(install: TritonInstall, workdir: Path) -> tuple[list[str], dict[str, str]]:
    """Extra ``tritonserver`` arguments and the environment for it; pytriton's build is prepared in ``workdir``.

    The stub must sit next to ``libtriton_python.so`` (site-packages may be read-only, so a backend folder
    in ``workdir`` links the backend and copies the stub). The stub's interpreter finds its packages through
    the ``python3`` first on PATH: a venv over this interpreter whose site-packages lists numpy<2 and this
    project first (path lines in a ``.pth`` file, nothing executed).
    """
    env = dict(os.environ)
    if install.pytriton is None:
        return [], env
    stub = install.pytriton / "python_backend_stubs" / PY / "triton_python_backend_stub"
    if not stub.is_file():
        raise UserError(f"{install.pytriton}: has no Python backend stub for Python {PY}; use Python 3.8-3.12")
    backend = workdir / "backends" / "python"
    backend.mkdir(parents=True)
    for f in (install.pytriton / "backends" / "python").iterdir():
        if f.is_file():
            (backend / f.name).symlink_to(f)
    shutil.copy2(stub, backend / stub.name)

    paths = [str(_project_root())]
    if stub_needs_numpy1():
        site = stub_site_dir()
        if not (site / "numpy" / "__init__.py").is_file():
            raise UserError(
                f"Triton's Python backend stub needs numpy<2 and {site} has none; run python -m runtime.serve --setup once"
            )
        paths.insert(0, str(site))
    env_dir = workdir / "stub-python"
    venv.EnvBuilder(system_site_packages=True, symlinks=True, with_pip=False).create(env_dir)
    site_packages = env_dir / "lib" / f"python{PY}" / "site-packages"
    (site_packages / "cornernet_triton_stub.pth").write_text("".join(f"{p}\n" for p in paths))

    env["PATH"] = os.pathsep.join([str(env_dir / "bin"), env.get("PATH", "")])
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*(str(d) for d in install.lib_dirs), env.get("LD_LIBRARY_PATH", "")])
    return ["--backend-directory", str(workdir / "backends")], env


# -- the server -------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def check_repository(repo: Path, install: TritonInstall) -> list[str]:
    """Model names in ``repo``; a ``UserError`` when one needs a backend this server lacks."""
    if not repo.is_dir():
        raise UserError(f"{repo}: model repository folder not found; write one with python -m export.to_triton MODEL --repo {repo}")
    names = []
    have = install.backends
    for config in sorted(repo.glob("*/config.pbtxt")):
        text = config.read_text(errors="replace")
        names.append(config.parent.name)
        m = re.search(r'^(?:backend|platform):\s*"([^"]+)"', text, re.M)
        kind = m.group(1) if m else ""
        kind = {"tensorrt_plan": "tensorrt", "onnxruntime_onnx": "onnxruntime"}.get(kind, kind)
        if kind and kind != "ensemble" and kind not in have:
            raise UserError(
                f"{config}: needs Triton's '{kind}' backend, which this server ({install.binary}) lacks (it has: "
                f"{', '.join(sorted(have)) or 'none'}); rewrite it with python -m export.to_triton MODEL --repo {repo} "
                "--net-backend python, or serve it in NVIDIA's tritonserver container"
            )
    if not names:
        raise UserError(f"{repo}: no models (no */config.pbtxt); write one with python -m export.to_triton MODEL --repo {repo}")
    return names


def _group_alive(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                alive.append(int(stat.parent.name))
    return alive


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the thread that started it dies (Linux), so a killed
    ``runtime.serve`` or test run leaves no server behind."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class TritonServer:
    """A ``tritonserver`` process on 127.0.0.1 for ``repo``; a context manager that always stops it.

    Ports left as None are chosen free. The server runs in its own process group (it starts one stub
    process per Python-backend instance), so :meth:`stop` can end all of it.
    """

    def __init__(
        self,
        repo: str | Path,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        ready_timeout_s: float = 180.0,
        stop_timeout_s: float = 30.0,
    ) -> None:
        self.repo = Path(repo).resolve()
        self.ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.workdir: Path | None = None
        self.models: list[str] = []

    @property
    def http_url(self) -> str:
        return f"{HOST}:{self.ports['http']}"

    @property
    def grpc_url(self) -> str:
        return f"{HOST}:{self.ports['grpc']}"

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "server.log"

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def start(self) -> TritonServer:
        install = find_tritonserver()
        self.models = check_repository(self.repo, install)
        self.workdir = Path(tempfile.mkdtemp(prefix="cornernet-triton-"))
        try:
            extra, env = prepare_runtime(install, self.workdir)
            chosen = [k for k, v in self.ports.items() if v is None]
            for attempt in range(3):  # a free port can be taken between choosing and binding
                for k in chosen:
                    self.ports[k] = free_port()
                self._launch(install, extra, env)
                if self._wait_ready() or attempt == 2 or not chosen or "already in use" not in self.log_tail(50):
                    break
            if self.proc is None or self.proc.poll() is not None:
                raise UserError(f"Triton server exited while loading {self.repo}: {self._errors()}")
            return self
        except BaseException:
            self.stop(keep_files=True)  # the log stays for the message's path
            raise

    def _launch(self, install: TritonInstall, extra: list[str], env: dict[str, str]) -> None:
        cmd = [
            str(install.binary),
            "--model-repository", str(self.repo),
            *extra,
            "--http-address", HOST, "--http-port", str(self.ports["http"]),
            "--grpc-address", HOST, "--grpc-port", str(self.ports["grpc"]),
            "--metrics-address", HOST, "--metrics-port", str(self.ports["metrics"]),
            "--exit-timeout-secs", str(max(1, int(self.stop_timeout_s) - 5)),
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def _errors(self) -> str:
        text = self.log_tail(200).splitlines()
        errors = [line for line in text if re.match(r"^E\d{4}", line) or "rror" in line]
        tail = " | ".join(line.strip()[:300] for line in (errors or text)[-3:])
        return f"{tail} (log: {self.log_path})"

    def _wait_ready(self) -> bool:
        """Poll ``/v2/health/ready`` until ready (True), the process exits or the timeout passes (False)."""
        assert self.proc is not None
        deadline = time.monotonic() + self.ready_timeout_s
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            with contextlib.suppress(OSError, urllib.error.URLError), urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return True
            time.sleep(0.25)
        raise UserError(f"Triton server not ready after {self.ready_timeout_s:.0f} s: {self._errors()}")

    def alive_processes(self) -> list[int]:
        """The server and its stubs still running (empty once stopped)."""
        return _group_alive(self.proc.pid) if self.proc is not None else []

    def stop(self, keep_files: bool = False) -> None:
        """SIGTERM (Triton unloads its models and its stubs exit), SIGKILL to the group after the timeout."""
        proc = self.proc
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=self.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
            # stubs notice their server is gone and exit; give them a moment, then end stragglers
            deadline = time.monotonic() + 10
            while _group_alive(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _group_alive(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        if self.workdir is not None and not keep_files:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def serving(repo: str | Path, **kwargs: object) -> Iterator[TritonServer]:
    """``with serving(repo) as server:`` a started :class:`TritonServer`, always stopped afterwards."""
    server = TritonServer(repo, **kwargs)  # type: ignore[arg-type]
    with server:
        yield server


# -- command line -----------------------------------------------------------------------------------------


def make_parser() -> argparse.ArgumentParser:
    p = parser_from_doc("python -m runtime.serve", __doc__)
    p.add_argument("repo", nargs="?", help="model repository written by python -m export.to_triton")
    p.add_argument("--http-port", type=int, default=8000, metavar="P", help="HTTP port on 127.0.0.1 (default: 8000)")
    p.add_argument("--grpc-port", type=int, default=8001, metavar="Q", help="gRPC port on 127.0.0.1 (default: 8001)")
    p.add_argument("--metrics-port", type=int, default=8002, metavar="R", help="metrics port on 127.0.0.1 (default: 8002)")
    p.add_argument("--timeout", type=float, default=300.0, metavar="S", help="seconds to wait for the models to load (default: 300)")
    p.add_argument("--setup", action="store_true", help=f"install {STUB_NUMPY} for the Python backend stub (once), then exit unless REPO is given")
    return p


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    if args.setup:
        print(f"stub     {setup_stub_site(quiet=False)} ({STUB_NUMPY} for Triton's Python backend stub)")
        if not args.repo:
            return EXIT_OK
    if not args.repo:
        raise UserError("give the model repository: python -m runtime.serve REPO (write one with python -m export.to_triton)")
    server = TritonServer(args.repo, args.http_port, args.grpc_port, args.metrics_port, ready_timeout_s=args.timeout)
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        server.start()
        ensembles = [m for m in server.models if f"{m}_net" in server.models] or server.models
        print(f"serving  {server.repo} (models: {', '.join(server.models)})")
        print(f"http     http://{server.http_url}    e.g. http://{server.http_url}/{ensembles[0]}")
        print(f"grpc     grpc://{server.grpc_url}    e.g. grpc://{server.grpc_url}/{ensembles[0]}")
        print(f"metrics  http://{HOST}:{server.ports['metrics']}/metrics")
        print(f"log      {server.log_path}")
        print("Ctrl-C to stop", flush=True)
        assert server.proc is not None
        while server.proc.poll() is None:
            time.sleep(0.5)
        print(f"error: the Triton server exited on its own: {server._errors()}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    except KeyboardInterrupt:
        print("stopping", flush=True)
        return EXIT_OK
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, make_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
