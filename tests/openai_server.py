"""A real OpenAI-compatible HTTP server on loopback, for tests of the `openai:` model path.

It runs `transformers serve` (the CLI shipped with transformers 5.x; needs the
`fastapi`, `uvicorn` and `openai` packages) as a subprocess, pinned to one local
Hugging Face model directory, fully offline.  Usage:

    from openai_server import openai_server
    from tiny_models import build_tiny_chat_model

    with openai_server(build_tiny_chat_model(tmp_path / "m")) as srv:
        ChatOpenAI(base_url=srv.base_url, api_key="unused", model=srv.model, max_tokens=8)

Notes on `transformers serve` (read from transformers/cli/serve.py and cli/serving/):
- The positional argument is `force_model`: the model is loaded before uvicorn starts,
  so `GET /health` answering 200 means the model is ready.  Requests must then name
  exactly that string as `model` (or omit it); any other name gets HTTP 400.
  Responses report the model as `<path>@main`.
- The path must not contain `@` (it is split off as a revision) nor end in
  `:<x>.gguf` (read as a GGUF file name).
- The chat template is the tokenizer's own (`apply_chat_template`, with
  `add_generation_prompt=True`); a model directory without one fails per request.
- `usage` (prompt/completion tokens) is reported both non-streaming and in the last
  streamed chunk (whatever `stream_options` says).  Streams end without `data: [DONE]`.
- Without `max_tokens` the server raises the model's `max_new_tokens` to at least 1024.
- The CLI entry point checks PyPI for a newer transformers unless
  `HF_HUB_DISABLE_UPDATE_CHECK=1`; that and the hub offline switches are set here.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_UPDATE_CHECK": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


@dataclass(frozen=True)
class OpenAIServer:
    base_url: str  # e.g. "http://127.0.0.1:PORT/v1"
    model: str  # the name to send as `model` in requests
    port: int
    pid: int
    log_path: Path


class ServerStartError(RuntimeError):
    pass


def serve_available() -> bool:
    """True when `transformers serve` can run here (fastapi, uvicorn, openai, pydantic installed)."""
    try:
        from transformers.utils.import_utils import is_serve_available
    except ImportError:
        return False
    return bool(is_serve_available())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "<no log>"
    return "\n".join(text.splitlines()[-lines:])


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@contextlib.contextmanager
def openai_server(
    model_dir: str | os.PathLike,
    *,
    startup_timeout_s: float = 120.0,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> Iterator[OpenAIServer]:
    """Start `transformers serve <model_dir>` on a free 127.0.0.1 port, wait until it
    answers `/health` (at most `startup_timeout_s`), yield an `OpenAIServer`, and stop it
    (SIGTERM, then SIGKILL after 10 s) on exit.  The server's log (`.log_path`) is
    deleted on exit.

    Raises `ServerStartError` with the server's last log lines if it exits or does not
    get ready in time.  `extra_args` are appended to the command line (e.g.
    `["--default-seed", "0"]`); `env` entries override the environment.
    """
    if not serve_available():
        raise ServerStartError("transformers serve needs fastapi, uvicorn and openai: pip install -e '.[test]'")
    model = os.fspath(Path(model_dir).resolve())
    if "@" in model or model.endswith(".gguf"):
        raise ValueError(f"transformers serve cannot pin a path containing '@' or ending in .gguf: {model}")

    child_env = {**os.environ, **OFFLINE_ENV, **(env or {})}
    log_fd, log_name = tempfile.mkstemp(prefix="openai-server-", suffix=".log")
    os.close(log_fd)
    log_path = Path(log_name)

    try:
        for attempt in range(3):  # a free port can be taken between probe and bind: retry on that only
            port = free_port()
            cmd = [
                sys.executable, "-m", "transformers.cli.transformers", "serve", model,
                "--host", "127.0.0.1", "--port", str(port),
                "--device", "cpu", "--log-level", "warning",
                *extra_args,
            ]  # fmt: skip
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env)
            try:
                deadline = time.monotonic() + startup_timeout_s
                while True:
                    if proc.poll() is not None:
                        tail = _tail(log_path)
                        if "address already in use" in tail.lower() and attempt < 2:
                            break
                        raise ServerStartError(
                            f"transformers serve exited with {proc.returncode} before it was ready.\n"
                            f"command: {' '.join(cmd)}\n--- last log lines ---\n{tail}"
                        )
                    if _healthy(port):
                        break
                    if time.monotonic() > deadline:
                        raise ServerStartError(
                            f"transformers serve not ready after {startup_timeout_s:.0f} s.\n"
                            f"command: {' '.join(cmd)}\n--- last log lines ---\n{_tail(log_path)}"
                        )
                    time.sleep(0.2)
                if proc.poll() is not None:
                    continue  # port clash: next attempt
                yield OpenAIServer(
                    base_url=f"http://127.0.0.1:{port}/v1", model=model, port=port, pid=proc.pid, log_path=log_path
                )
                return
            finally:
                _stop(proc)
    finally:
        log_path.unlink(missing_ok=True)
