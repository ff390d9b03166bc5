"""An OpenAI-compatible chat-completions server that answers instantly, for benchmarks.

It measures the harness, not a model: every ``POST /v1/chat/completions`` is answered
at once with canned text that sends the divconq graph down the static route. A request
whose last user message holds the joint solver's sub-question header is a solver call and gets a worked answer
ending "The answer is: 72"; any other is a decomposer call and gets two sub-questions.
Replies carry the standard fields (id, object, created, model, choices, usage) that
langchain-openai's ChatOpenAI reads; ``"stream": true`` gets server-sent events.

It is a raw asyncio HTTP/1.1 server with keep-alive (no framework), so one core serves
several thousand requests a second and it is never the bottleneck of a bench. It binds
to 127.0.0.1 only.

    python bench/instant_server.py --port 8011        # prints "ready http://127.0.0.1:8011/v1"

    from instant_server import start_server           # a subprocess, stopped on exit
    with start_server() as server: server.base_url, server.cpu_seconds()
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

from divconq.nodes.prompts import SUBQUESTIONS_HEADER

HOST = "127.0.0.1"
DECOMPOSER_REPLY = "1. How many in May?\n2. How many in total?"
SOLVER_REPLY = "1. 24\n2. 72\n\nThe answer is: 72"

try:  # orjson is quicker when present; the stdlib works as well
    import orjson

    _loads = orjson.loads
    _dumps = orjson.dumps
except ImportError:  # pragma: no cover
    _loads = json.loads

    def _dumps(value: object) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()


def reply_for(request: dict) -> str:
    """The canned content for one chat-completions request body."""
    messages = request.get("messages") or []
    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    content = (last_user or {}).get("content") or ""
    if isinstance(content, list):  # content parts
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return SOLVER_REPLY if SUBQUESTIONS_HEADER in content else DECOMPOSER_REPLY


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _prompt_tokens(request: dict) -> int:
    return sum(_tokens(str(m.get("content") or "")) for m in request.get("messages") or [])


class _Counter:  # for unique completion ids
    n = 0


def completion_body(request: dict) -> bytes:
    _Counter.n += 1
    text = reply_for(request)
    prompt, completion = _prompt_tokens(request), _tokens(text)
    return _dumps({
        "id": f"chatcmpl-instant-{_Counter.n}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.get("model") or "instant",
        "system_fingerprint": "instant",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": "stop",
        }],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    })


def stream_body(request: dict) -> bytes:
    """The same reply as server-sent events: one content chunk, a usage chunk, [DONE]."""
    _Counter.n += 1
    text = reply_for(request)
    prompt, completion = _prompt_tokens(request), _tokens(text)
    base = {"id": f"chatcmpl-instant-{_Counter.n}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": request.get("model") or "instant"}
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    if (request.get("stream_options") or {}).get("include_usage"):
        chunks.append({**base, "choices": [],
                       "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                 "total_tokens": prompt + completion}})
    return b"".join(b"data: " + _dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def _response(status: str, body: bytes, content_type: bytes = b"application/json", close: bool = False) -> bytes:
    head = (
        b"HTTP/1.1 " + status.encode() + b"\r\ncontent-type: " + content_type
        + b"\r\ncontent-length: " + str(len(body)).encode()
        + (b"\r\nconnection: close" if close else b"\r\nconnection: keep-alive")
        + b"\r\n\r\n"
    )
    return head + body


class InstantProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive and pipelining; Content-Length bodies only."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            lines = head.split("\r\n")
            try:
                method, path, _ = lines[0].split(" ", 2)
            except ValueError:
                self.transport.write(_response("400 Bad Request", b'{"error":"bad request line"}', close=True))
                self.transport.close()
                return
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self.transport.write(_response("411 Length Required", b'{"error":{"message":"send a Content-Length"}}',
                                               close=True))
                self.transport.close()
                return
            length = int(headers.get("content-length") or 0)
            if len(self.buffer) < end + 4 + length:
                return  # wait for the rest of the body
            body = self.buffer[end + 4: end + 4 + length]
            self.buffer = self.buffer[end + 4 + length:]
            close = headers.get("connection", "").lower() == "close"
            self.transport.write(self.handle(method, path.split("?", 1)[0], body, close))
            if close:
                self.transport.close()
                return

    def handle(self, method: str, path: str, body: bytes, close: bool) -> bytes:
        if method == "POST" and path.endswith("/chat/completions"):
            try:
                request = _loads(body)
            except ValueError:
                return _response("400 Bad Request", b'{"error":{"message":"body is not JSON"}}', close=close)
            if request.get("stream"):
                return _response("200 OK", stream_body(request), b"text/event-stream", close=close)
            return _response("200 OK", completion_body(request), close=close)
        if method == "GET" and path.endswith("/models"):
            return _response("200 OK", b'{"object":"list","data":[{"id":"instant","object":"model","owned_by":"bench"}]}',
                             close=close)
        if method == "GET" and path in ("/health", "/"):
            return _response("200 OK", b'{"status":"ok"}', close=close)
        return _response("404 Not Found", b'{"error":{"message":"not found"}}', close=close)


async def serve(port: int, ready: bool = True) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(InstantProtocol, HOST, port, backlog=1024, reuse_address=True)
    actual = server.sockets[0].getsockname()[1]
    if ready:
        print(f"ready http://{HOST}:{actual}/v1", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class RunningServer:
    base_url: str  # http://127.0.0.1:PORT/v1
    pid: int

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far (Linux /proc)."""
        try:
            fields = open(f"/proc/{self.pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def start_server(port: int | None = None, timeout: float = 20.0) -> Iterator[RunningServer]:
    """Run this server in a subprocess; yields its ``base_url`` (``http://127.0.0.1:PORT/v1``) and pid."""
    port = port or free_port()
    process = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], timeout)
        line = process.stdout.readline() if ready else ""
        if not line.startswith("ready "):
            process.kill()
            raise RuntimeError(f"instant server did not start within {timeout:.0f} s: {line.strip() or process.wait()}")
        yield RunningServer(line.split()[1], process.pid)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8011, help="0 picks a free port")
    args = parser.parse_args()
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
