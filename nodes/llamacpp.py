"""llama.cpp on this machine: where its build lives, how to build it, and ``llama-server``
as a child process that divconq starts, waits for and stops.

llama.cpp ships no binary on PyPI. ``divconq llamacpp build`` compiles ``llama-server``
and ``llama-quantize`` from the llama.cpp source that the llama-cpp-python sdist vendors
(about 10 minutes on 2 cores; needs cmake and a C++ compiler) into the divconq cache,
and keeps that source for its GGUF converters (``convert_hf_to_gguf.py``,
``convert_lora_to_gguf.py``).

Why a managed ``llama-server`` and not llama-cpp-python in-process: both run the same
ggml kernels, so one stream decodes at the same speed, but llama-cpp-python's ``Llama``
decodes one sequence at a time, while ``llama-server`` batches concurrent requests into
one pass over the weights (``--parallel`` slots, continuous batching). The graph and
``collect``/``eval`` send concurrent requests, so batching is what they need
(``bench/decode.py`` measures both shapes; ``bench/RESULTS.md``).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

from divconq.errors import DivconqError, ModelSpecError

LLAMA_CPP_PYTHON_VERSION = "0.3.36"  # the sdist whose vendored llama.cpp divconq builds and converts with
BUILD_TARGETS = ("llama-server", "llama-quantize")
BUILD_COMMAND = "divconq llamacpp build"
EXTRA_INSTALL = "pip install 'divconq[llamacpp]'"
_CMAKE_FLAGS = ["-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
                "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"]
Tool = Literal["llama-server", "llama-quantize"]


def llamacpp_home() -> Path:
    """The divconq cache folder that holds the llama.cpp source and build."""
    from divconq.nodes.models import _cache_root

    return _cache_root() / "llama.cpp"


def source_dir() -> Path:
    """The llama.cpp source vendored by the llama-cpp-python sdist (its converters live here)."""
    return llamacpp_home() / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}" / "vendor" / "llama.cpp"


def tool_path(tool: Tool) -> Path | None:
    """A built llama.cpp tool, or None. ``$LLAMA_SERVER`` names another ``llama-server``;
    ``llama-quantize`` is looked for beside it."""
    server = Path(os.environ.get("LLAMA_SERVER") or llamacpp_home() / "build" / "bin" / "llama-server")
    path = server if tool == "llama-server" else server.with_name(tool)
    return path if path.is_file() and os.access(path, os.X_OK) else None


def missing_line(what: str) -> str:
    """The one line for a missing llama.cpp build, with the command that makes it."""
    return (f"{what} needs llama.cpp, which is not built here: run `{BUILD_COMMAND}` (compiles llama-server from the "
            f"llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist on PyPI, about 10 min on 2 cores; needs cmake and a "
            f"C++ compiler) after `{EXTRA_INSTALL}`, or set LLAMA_SERVER to a llama-server binary")


def require_tool(tool: Tool, what: str) -> Path:
    path = tool_path(tool)
    if path is None:
        raise ModelSpecError(missing_line(what))
    return path


def require_source(what: str) -> Path:
    """The vendored llama.cpp source, for its GGUF converters."""
    source = source_dir()
    if not (source / "convert_hf_to_gguf.py").is_file():
        raise ModelSpecError(missing_line(what))
    return source


def is_available() -> bool:
    """Whether llama-server is built and its converter can run (the [llamacpp] extra):
    ``default`` then runs through it."""
    import importlib.util

    return (tool_path("llama-server") is not None and (source_dir() / "convert_hf_to_gguf.py").is_file()
            and importlib.util.find_spec("sentencepiece") is not None)


# --------------------------------------------------------------------------- building


def build(*, jobs: int | None = None, force: bool = False, log: Any = None) -> Path:
    """Download the llama-cpp-python sdist, unpack it and compile ``BUILD_TARGETS`` into the
    cache; returns the ``llama-server`` path. A finished build is kept unless ``force``."""
    log = log or sys.stderr
    home = llamacpp_home()
    server = home / "build" / "bin" / "llama-server"
    if not force and all((server.with_name(t)).is_file() for t in BUILD_TARGETS) and source_dir().is_dir():
        print(f"llama.cpp is already built: {server} (--force rebuilds)", file=log)
        return server
    for program in ("cmake", "c++"):
        if shutil.which(program) is None:
            raise DivconqError(f"building llama.cpp needs `{program}`, which is not on PATH: install cmake and a C++ "
                               "compiler (Debian: apt-get install cmake g++), then rerun")
    home.mkdir(parents=True, exist_ok=True)
    _unpack_sdist(home, log)
    _run(["cmake", "-S", str(source_dir()), "-B", str(home / "build"), *_CMAKE_FLAGS], "configure llama.cpp", log)
    targets = [arg for t in BUILD_TARGETS for arg in ("--target", t)]
    _run(["cmake", "--build", str(home / "build"), *targets, "-j", str(jobs or os.cpu_count() or 1)],
         "compile llama.cpp", log)
    _run([str(server), "--version"], "run the built llama-server", log)
    print(f"built {server}", file=log)
    return server


def _unpack_sdist(home: Path, log: Any) -> None:
    if source_dir().is_dir():
        return
    archive = home / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
    if not archive.is_file():
        _run([sys.executable, "-m", "pip", "download", f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}",
              "--no-binary", ":all:", "--no-deps", "-d", str(home), "-q"], "download the llama-cpp-python sdist", log)
    # Unpacked beside its final place and renamed: an interrupted unpack never looks finished.
    scratch = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=home))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(scratch, filter="data")
        os.replace(scratch / archive.name.removesuffix(".tar.gz"), source_dir().parents[1])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run(command: list[str], doing: str, log: Any) -> None:
    print(f"+ {' '.join(command)}", file=log, flush=True)
    try:
        # The compiler's progress lines ([ 42%] ...) are the progress bar.
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    except OSError as exc:
        raise DivconqError(f"cannot {doing} ({exc.strerror or exc}): check that {command[0]} is installed") from None
    if result.returncode:
        raise DivconqError(f"could not {doing} (`{command[0]}` exited {result.returncode}; its output is above): "
                           "fix the cause it names and rerun")


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _first_error(log_path: Path) -> str | None:
    """The first error line llama.cpp wrote (``... E llama_model_load: error loading model: ...``)."""
    with contextlib.suppress(OSError):
        for line in log_path.read_text(errors="replace").splitlines():
            parts = line.split(" E ", 1)
            if len(parts) == 2 and parts[1].strip():
                return parts[1].strip()[:240]
    return None


class ManagedServer:
    """An OpenAI-compatible server process: ``start`` runs ``command`` and returns once
    ``ready_url`` answers; ``stop`` ends it (also at interpreter exit). Its output goes to
    ``log_path``. A process that exits or never becomes ready is one ``ModelSpecError``
    naming the first error it logged."""

    def __init__(self, command: list[str], url: str, ready_url: str, log_path: Path, *, name: str,
                 timeout_s: float = 180, stop_timeout_s: float = 15):
        self.command, self.url, self.ready_url, self.log_path = command, url, ready_url, log_path
        self.name, self.timeout_s, self.stop_timeout_s = name, timeout_s, stop_timeout_s
        self.process: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def start(self) -> str:
        with self._lock:
            if self.process is None or self.process.poll() is not None:
                with self.log_path.open("w") as log:
                    self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                                    stdin=subprocess.DEVNULL)
                _STARTED.add(self)
                _stop_on_sigterm()
                self._wait_ready()
        return self.url

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            if self.process.poll() is not None:
                reason = _first_error(self.log_path) or f"exit code {self.process.returncode}"
                raise ModelSpecError(f"{self.name} did not start ({reason}); its log is {self.log_path}")
            with contextlib.suppress(OSError):
                urllib.request.urlopen(self.ready_url, timeout=2).read()
                return
            if time.monotonic() > deadline:
                self.stop()
                raise ModelSpecError(f"{self.name} was not ready after {self.timeout_s:.0f} s; its log is "
                                     f"{self.log_path}")
            time.sleep(0.2)

    def stop(self) -> None:
        process, self.process = self.process, None
        _STARTED.discard(self)
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_STARTED: set[ManagedServer] = set()


def _stop_all() -> None:
    for server in list(_STARTED):
        server.stop()


atexit.register(_stop_all)


def _stop_on_sigterm() -> None:
    """SIGTERM ends Python without running atexit, so a started server would outlive its
    process. Where nothing else handles SIGTERM (and from the main thread, the only one that
    may set a handler), the servers are stopped first, then the process dies of the signal as
    it would have. A forked child inherits the handler but not the servers: it only dies."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return  # the program's own handler (or ours, already) stays
    owner = os.getpid()

    def stop_then_die(signum: int, frame: Any) -> None:
        if os.getpid() == owner:
            _stop_all()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, stop_then_die)


@dataclass(frozen=True)
class ServerSettings:
    """How a managed llama-server runs: ``parallel`` requests decoded in one batch, each with
    ``ctx`` tokens of context; ``threads`` None uses every core."""

    parallel: int = 4
    ctx: int = 4096
    threads: int | None = None
    timeout_s: float = 180


def llama_server(gguf: Path, *, lora: list[Path] | None = None, alias: str | None = None, port: int | None = None,
                 settings: ServerSettings = ServerSettings(), binary: Path | None = None) -> ManagedServer:
    """llama.cpp's ``llama-server`` for ``gguf`` (with ``lora`` adapters applied) on loopback,
    not yet started: ``with llama_server(...) as url`` or ``.start()``. ``url`` is the
    OpenAI base URL (``.../v1``); the model is served as ``alias``."""
    binary = binary or require_tool("llama-server", f"serving {gguf.name}")
    port = port or free_port()
    threads = settings.threads or os.cpu_count() or 1
    command = [str(binary), "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
               "--alias", alias or gguf.stem, "--ctx-size", str(settings.ctx * settings.parallel),
               "--parallel", str(settings.parallel), "--threads", str(threads), "--no-webui"]
    for adapter in lora or []:
        command += ["--lora", str(adapter)]
    log_path = Path(tempfile.gettempdir()) / f"divconq-llama-server-{port}.log"
    base = f"http://127.0.0.1:{port}"
    # /health answers 200 only once the model is loaded (503 while loading).
    return ManagedServer(command, f"{base}/v1", f"{base}/health", log_path, name=f"llama-server for {gguf.name}",
                         timeout_s=settings.timeout_s)


@contextlib.contextmanager
def openai_server(command: list[str], url: str, log_path: Path, *, name: str, timeout_s: float,
                  stop_timeout_s: float = 15) -> Iterator[str]:
    """Any OpenAI-compatible server ``command`` (vLLM, llama_cpp.server): yields ``url`` once
    ``{url}/models`` answers, stops the server on exit."""
    server = ManagedServer(command, url, f"{url}/models", log_path, name=name, timeout_s=timeout_s,
                           stop_timeout_s=stop_timeout_s)
    with server as ready:
        yield ready
