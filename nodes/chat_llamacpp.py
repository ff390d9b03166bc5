"""A GGUF model as a LangChain chat model, served by a ``llama-server`` child process.

``ChatLlamaCpp`` is ``ChatOpenAI`` pointed at a llama-server that divconq starts on
loopback, waits for and stops at exit, so it keeps the contract of every other model:
``usage_metadata`` from the server's token counts (streamed too), streaming, async on
httpx (the event loop never blocks), and the chat template stored in the GGUF (llama-server
renders it with its Jinja engine). Greedy by default: temperature 0.

One server per (model, adapters) in a process, shared by every chat model made from it;
it decodes up to ``ServerSettings.parallel`` requests in one batch.
"""

from __future__ import annotations

import threading
from pathlib import Path
from langchain_openai import ChatOpenAI
from pydantic import PrivateAttr

from divconq.nodes.gguf_files import check_lora_gguf, check_model_gguf
from divconq.nodes.llamacpp import ManagedServer, ServerSettings, llama_server

_SERVERS: dict[tuple[str, tuple[str, ...], ServerSettings], ManagedServer] = {}
_SERVERS_LOCK = threading.Lock()


class ChatLlamaCpp(ChatOpenAI):
    """ChatOpenAI on a llama-server child; the child lives while this process does."""

    _server: ManagedServer | None = PrivateAttr(default=None)

    @property
    def _llm_type(self) -> str:
        return "divconq-llamacpp"

    @property
    def server(self) -> ManagedServer | None:
        return self._server


def shared_server(gguf: Path, lora: list[Path], settings: ServerSettings = ServerSettings(),
                  alias: str | None = None) -> ManagedServer:
    """The running server for this model and these adapters, started on first use."""
    key = (str(gguf.resolve()), tuple(str(p.resolve()) for p in lora), settings)
    with _SERVERS_LOCK:
        server = _SERVERS.get(key)
        if server is None:
            server = llama_server(gguf, lora=lora, alias=alias, settings=settings)
            _SERVERS[key] = server
    server.start()  # a no-op while it runs; restarts one that died
    return server


def load_llamacpp_chat_model(
    gguf: str | Path, lora: str | Path | None = None, *, max_new_tokens: int = 256, label: str | None = None,
    settings: ServerSettings = ServerSettings(), temperature: float = 0.0,
) -> ChatLlamaCpp:
    """A chat model on ``gguf`` (with the LoRA GGUF ``lora`` applied), checked before the
    server starts: a file that is no GGUF model, or an adapter for another base, is one
    ``ModelSpecError``."""
    gguf = Path(gguf).expanduser()
    adapters = [Path(lora).expanduser()] if lora else []
    check_model_gguf(gguf)
    for adapter in adapters:
        check_lora_gguf(adapter, gguf)
    name = label or gguf.stem
    server = shared_server(gguf, adapters, settings, alias=name)
    chat = ChatLlamaCpp(
        model=name, base_url=server.url, api_key="not-needed", temperature=temperature, max_tokens=max_new_tokens,
        stream_usage=True,  # the last streamed chunk carries the token counts
        max_retries=0,  # the graph's RetryPolicy retries; the child is local, so no request timeout either
    )
    chat._server = server
    return chat


def stop_servers() -> None:
    """Stop every server this process started (they also stop at exit)."""
    with _SERVERS_LOCK:
        servers = list(_SERVERS.values())
        _SERVERS.clear()
    for server in servers:
        server.stop()

