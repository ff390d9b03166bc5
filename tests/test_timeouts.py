"""A server that accepts connections and never answers (a real loopback socket) must not
hang a run: each request times out, the graph retries it as a transient error, and the
command ends with one line. Nothing here waits longer than a few timeouts of one second."""

import socket
import subprocess
import sys
import threading
import time

import pytest
from langgraph.types import RetryPolicy

from divconq.errors import ModelSpecError
from divconq.graph import build_graph
from divconq.nodes.models import DEFAULT_TIMEOUT_SECONDS, load_chat_model
from divconq.nodes.graph_nodes import is_transient_error


class HungServer:
    """Listens on loopback, accepts every connection, reads nothing, answers nothing."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)  # held open, never answered

    def wait_for_accepted(self, count: int, within_s: float = 5.0) -> int:
        """How many connections were accepted, waiting for ``count``: on a loaded machine a
        connection the client made can sit in the backlog until this thread runs."""
        deadline = time.monotonic() + within_s
        while len(self.accepted) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return len(self.accepted)

    @property
    def spec(self) -> str:
        return f"openai:stuck@http://127.0.0.1:{self.port}/v1"

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def hung_server():
    server = HungServer()
    yield server
    server.close()


def test_ask_on_a_hung_server_is_retried_then_one_line(hung_server):
    result = subprocess.run(
        [sys.executable, "-m", "divconq.cli", "ask", "What is 2+3?", "--mode", "single", "--decomposer",
         hung_server.spec, "--solver", hung_server.spec, "--timeout", "1"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("divconq: error")]
    assert len(errors) == 1 and "did not answer within 1 s" in errors[0] and "--timeout" in errors[0]
    assert hung_server.wait_for_accepted(3) == 3  # the graph's three attempts, no hidden client retries


def test_build_graph_timeout_makes_a_hung_call_a_transient_error(hung_server):
    retry = RetryPolicy(max_attempts=2, initial_interval=0.01, retry_on=is_transient_error)
    graph = build_graph(hung_server.spec, hung_server.spec, mode="single", timeout=0.5, retry=retry).compile()
    with pytest.raises(Exception) as caught:
        graph.invoke({"question": "What is 2+3?", "context": None})
    # A transient error (a request timeout, on a loaded machine at times seen as a dropped
    # connection), so the policy retried it: the server saw both attempts.
    assert is_transient_error(caught.value), repr(caught.value)
    assert hung_server.wait_for_accepted(2) == 2


def test_api_models_get_the_default_timeout_and_no_client_retries():
    model = load_chat_model("openai:m@http://127.0.0.1:9/v1")
    assert model.request_timeout == DEFAULT_TIMEOUT_SECONDS and model.max_retries == 0
    assert load_chat_model("openai:m@http://127.0.0.1:9/v1", timeout=None).request_timeout is None


@pytest.mark.parametrize("timeout", [0, -1, "soon", float("nan")])
def test_a_bad_timeout_is_refused(timeout):
    with pytest.raises(ModelSpecError, match="timeout must be a positive number"):
        load_chat_model("openai:m@http://127.0.0.1:9/v1", timeout=timeout)


def test_eval_on_a_hung_server_stops_with_one_line_and_writes_no_wrong_rows(hung_server, tmp_path):
    import json

    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i}+{i}?", "answer": str(2 * i)}) + "\n" for i in range(6)))
    out = tmp_path / "r.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "divconq.cli", "eval", "--dataset", "jsonl", "--data", str(data), "--out", str(out),
         "--mode", "single", "--decomposer", hung_server.spec, "--solver", hung_server.spec, "--timeout", "0.5",
         "--concurrency", "6"],
        capture_output=True, text=True, timeout=300,
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("divconq: error")]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(errors) == 1 and "stopped answering" in errors[0] and "rerun" in errors[0]
    # A question lost to the server is not scored wrong: it is left for the rerun.
    assert not out.exists() or out.read_text() == ""
