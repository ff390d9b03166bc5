"""A real OpenAI-compatible server (`transformers serve`) on loopback, called through ChatOpenAI."""

import pytest
from openai_server import openai_server, serve_available
from tiny_models import build_tiny_chat_model

pytestmark = [pytest.mark.server]


def test_server_extras_are_installed():
    # The README's test install brings fastapi, uvicorn and openai; without them this path is untested.
    assert serve_available(), "pip install -e '.[test]' to get the server's dependencies"


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory):
    model_dir = build_tiny_chat_model(tmp_path_factory.mktemp("tiny_chat"))
    with openai_server(model_dir) as srv:
        yield srv


def _chat(srv, **kwargs):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(base_url=srv.base_url, api_key="unused", model=srv.model, max_tokens=8, timeout=60, **kwargs)


def _assert_usage(msg):
    usage = msg.usage_metadata
    assert usage is not None, "transformers serve reports usage"
    assert usage["input_tokens"] > 0
    assert 0 < usage["output_tokens"] <= 8
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_invoke(tiny_server):
    from langchain_core.messages import AIMessage

    msg = _chat(tiny_server).invoke([("system", "Be brief."), ("user", "What is 2 + 2?")])
    assert isinstance(msg, AIMessage)
    assert isinstance(msg.content, str) and msg.content.strip()
    _assert_usage(msg)
    assert msg.response_metadata.get("finish_reason") in {"stop", "length"}


def test_stream(tiny_server):
    chunks = list(_chat(tiny_server, stream_usage=True).stream("Say hello."))
    assert chunks
    msg = chunks[0]
    for chunk in chunks[1:]:
        msg = msg + chunk
    assert isinstance(msg.content, str) and msg.content.strip()
    _assert_usage(msg)


def test_openai_spec_runs_the_graph(tiny_server, monkeypatch):
    """The `openai:` spec path end to end: load_chat_model -> graph -> a real HTTP server."""
    from divconq.graph import build_graph
    from divconq.nodes import load_chat_model

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    model = load_chat_model(f"openai:{tiny_server.model}@{tiny_server.base_url}", max_new_tokens=8)
    out = build_graph(model, model).compile().invoke({"question": "What is 2 + 3?"})
    # The tiny model writes gibberish: no sub-questions, so the graph answers single-stage.
    assert out["route"] == "single" and out["solution"]
    for role in ("decomposer", "solver"):
        assert out["usage"][role]["calls"] == 1
        assert out["usage"][role]["input_tokens"] > 0 and 0 < out["usage"][role]["output_tokens"] <= 8


def test_base_url_from_the_environment(tiny_server, monkeypatch):
    from divconq.nodes import load_chat_model

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", tiny_server.base_url)
    reply = load_chat_model(f"openai:{tiny_server.model}", max_new_tokens=4).invoke("Hello")
    assert reply.content and reply.usage_metadata["output_tokens"] > 0


def test_local_servers_get_the_token_cap_in_both_fields(monkeypatch):
    """llama-cpp-python's server ignores max_completion_tokens (what langchain-openai
    sends); the request to a local base URL must also carry max_tokens."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from divconq.nodes import load_chat_model

    bodies = []

    class Recorder(BaseHTTPRequestHandler):
        def do_POST(self):
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            reply = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "The answer is: 4"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        assert load_chat_model(f"openai:m@{url}", max_new_tokens=7).invoke("2+2?").content == "The answer is: 4"
    finally:
        server.shutdown()
    assert bodies[0]["max_tokens"] == 7 and bodies[0]["max_completion_tokens"] == 7
