"""A real OpenAI-compatible server (`transformers serve`) on loopback, called through ChatOpenAI."""

import pytest
from openai_server import openai_server, serve_available
from tiny_models import build_tiny_chat_model

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(not serve_available(), reason="transformers serve needs fastapi, uvicorn, openai"),
]


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
