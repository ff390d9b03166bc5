"""The bad-input battery: every CLI verb on a table of bad inputs.

Each case must end with exactly one ``divconq: error`` line and a non-zero exit; an
exception out of ``main`` (a traceback) or exit 0 fails it. Most cases run in-process
through ``main()`` (fast); the ones that need another process (file permissions,
argv bytes that are not UTF-8) run as subprocesses. Add a row to ``CASES`` for each new
way a user can get it wrong.

Placeholders in a case: {w} the shared directory of bad and good files built once
(``world``), {t} a fresh directory for the case's outputs, {tiny} a tiny local model
spec, {bad_url} a server that refuses connections.
"""

from __future__ import annotations

import json
import os
import shlex
import sqlite3
import subprocess
import sys

import pytest
from test_models import make_adapter
from unprivileged import run_unprivileged

from divconq.cli import main
from divconq.distill.datasets import question_id
from divconq.distill.traces import TraceRun, TraceStore

ROW = {"id": "q1", "question": "Q?", "gold": ["1"], "prediction": "1", "score": 1.0, "route": "static",
       "subquestions": [], "sub_answers": [], "seconds": 0.1, "error": None, "dataset": "jsonl",
       "decomposer": "d", "solver": "s", "mode": "static", "usage": {}}
QUESTIONS = ["What is 2 plus 2?", "What is 3 plus 3?"]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir):
    """Good and bad inputs, built once: data, stores, results, pricing, exports, SFT dirs, adapters."""
    w = tmp_path_factory.mktemp("world")
    text = {
        "q.jsonl": "".join(json.dumps({"question": q, "answer": str(4 + 2 * i)}) + "\n" for i, q in enumerate(QUESTIONS)),
        "empty.txt": "",
        "list.json": "[1, 2]\n",
        "object.json": '{"a": 1}\n',
        "null.json": "null\n",
        "numq.jsonl": '{"question": 5, "answer": "1"}\n',
        "noanswer.jsonl": '{"question": "What is 1?"}\n',
        "badjson.jsonl": '{"question": "What\n',
        "file.txt": "just text\n",
        "gsm_bad.jsonl": '{"q": "x"}\n',
        "strategy_list.json": '{"not": "a list"}\n',
        "allids.txt": "".join(question_id("jsonl", q) + "\n" for q in QUESTIONS),
        "results.jsonl": json.dumps(ROW) + "\n",
        "r_list.jsonl": "[1, 2]\n",
        "r_noid.jsonl": '{"a": 1}\n',
        "r_noseconds.jsonl": '{"id": "q1", "usage": {}}\n',
        "r_torn_middle.jsonl": json.dumps(ROW) + "\n{not json\n" + json.dumps({**ROW, "id": "q2"}) + "\n",
        "r_badscore.jsonl": json.dumps({**ROW, "score": "high"}) + "\n",
        "p_list.json": "[1]\n",
        "p_missing_output.json": '{"x": {"input": 0.001}}\n',
        "p_nonnumber.json": '{"x": {"input": "cheap", "output": 0.002}}\n',
        "p_negative.json": '{"x": {"input": -1, "output": 0.002}}\n',
        "p_badjson.json": '{"x": \n',
        "ls_badjson.jsonl": "{not json\n",
        "ls_list.jsonl": "[1, 2]\n",
        "ls_noid.jsonl": '{"a": 1}\n',
        "ls_badfield.jsonl": '{"id": "not-a-uuid", "run_type": "chain", "name": "x"}\n',
        "spaces.txt": "   \n\n",
        "qdmr.csv": "question_id,question_text,decomposition\nb1,What is the tallest tower?,return towers ;return #1 that is tallest\n",
        "exists.gguf": "not a GGUF file\n",
    }
    for name, body in text.items():
        (w / name).write_text(body, encoding="utf-8")
    (w / "binary.bin").write_bytes(bytes(range(256)) * 8)
    (w / "latin1.txt").write_bytes("caf\xe9 au lait, combien ?\n".encode("latin-1"))
    (w / "adir").mkdir()
    good = w / "good.db"
    with TraceStore(good) as store:
        for i in range(3):
            store.write_run(TraceRun(run_id=f"r{i}", question=f"Q{i}?", example_id=f"e{i}", dataset="jsonl"))
    with TraceStore(w / "decomposed.db") as store:  # runs SFT data can be built from
        for i in range(6):
            store.write_run(TraceRun(run_id=f"d{i}", question=f"What is {i} times {i} plus {i}?", example_id=f"e{i}",
                                     dataset="jsonl", route="static", decomposition="1. What is the product?\n2. What is the sum?"))
    with TraceStore(w / "errors.db") as store:
        store.write_run(TraceRun(run_id="x", question="Q?", example_id="e", dataset="jsonl", status="error"))
    TraceStore(w / "fresh.db").close()  # a store with the schema and no runs
    other = sqlite3.connect(w / "other.db")
    other.execute("CREATE TABLE x (a)")
    other.commit()
    other.close()
    for name, meta in (("wrongformat.db", [("format", "someone-else")]),
                       ("future.db", [("format", "divconq-traces"), ("schema_version", "99")])):
        db = sqlite3.connect(w / name)
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        db.executemany("INSERT INTO meta VALUES (?, ?)", meta)
        db.commit()
        db.close()
    damaged = w / "damaged.db"
    with TraceStore(damaged) as store:
        for i in range(200):
            store.write_run(TraceRun(run_id=f"r{i}", question="Q? " + "x" * 500, example_id=f"e{i}", dataset="d"))
    size = damaged.stat().st_size
    with damaged.open("r+b") as handle:
        handle.seek(size // 4096 // 2 * 4096)
        handle.write(b"\xa5" * 4096)
    for name, body in (("sft_garbage", "garbage\n"), ("sft_emptyfile", ""), ("sft_list", "[1]\n"),
                       ("sft_nomessages", '{"prompt": "x"}\n'), ("sft_notassistant", json.dumps(
                           {"messages": [{"role": "user", "content": "q"}]}) + "\n")):
        (w / name).mkdir()
        (w / name / "train.jsonl").write_text(body)
    (w / "sft_empty").mkdir()
    (w / "nonempty").mkdir()
    (w / "nonempty" / "keep.txt").write_text("keep")
    make_adapter(tiny_model_dir, w / "adapter_plain", manifest=False)
    (w / "adapter_noconfig").mkdir()
    return w


def _values(world, tmp_path, tiny_model_dir):
    return {"w": str(world), "t": str(tmp_path), "tiny": f"hf:{tiny_model_dir}",
            "bad_url": "openai:m@http://127.0.0.1:9/v1"}


EVAL = "eval --dataset jsonl --data {w}/q.jsonl --out {t}/r.jsonl --decomposer {tiny} --solver {tiny}"
COLLECT = "collect --dataset jsonl --data {w}/q.jsonl --store {t}/s.db --decomposer {tiny} --solver {tiny}"
ASK = "ask 'What is 2+2?' --mode single --decomposer {tiny} --solver {tiny}"
SFT = "sft --store {w}/good.db --out {t}/sft"
TRAIN = "train --data {w}/sft_garbage --out {t}/adapter"
IMPROVE = "improve --student {tiny} --solver {tiny} --dataset jsonl --data {w}/q.jsonl --out {t}/improve"
BAD_NUMBERS = ["0", "-1", "-5", "1.5", "abc", "''", "1e3x"]
BAD_FLOATS = ["0", "-1", "nan", "inf", "abc", "''"]

CASES: list[tuple[str, str]] = [
    # -- the command line itself
    ("no verb", ""),
    ("unknown verb", "frobnicate"),
    ("unknown flag", "ask 'Q?' --frobnicate"),
    ("trace without subcommand", "trace"),
    ("trace unknown subcommand", "trace explode {w}/good.db"),
    # -- ask
    ("ask empty question", "ask ''"),
    ("ask blank question", "ask '   '"),
    ("ask newline question", "ask '\n\t'"),
    ("ask no question", "ask"),
    ("ask context missing", "ask 'Q?' --context {w}/missing.txt"),
    ("ask context dir", "ask 'Q?' --context {w}/adir"),
    ("ask context binary", "ask 'Q?' --context {w}/binary.bin"),
    ("ask context latin1", "ask 'Q?' --context {w}/latin1.txt"),
    ("ask spec nonsense", "ask 'Q?' --decomposer nonsense"),
    ("ask spec empty", "ask 'Q?' --decomposer ''"),
    ("ask spec blank", "ask 'Q?' --solver '  '"),
    ("ask spec hf empty", "ask 'Q?' --decomposer hf:"),
    ("ask spec hf missing", "ask 'Q?' --decomposer hf:{w}/missing-model"),
    ("ask spec hf file", "ask 'Q?' --decomposer hf:{w}/file.txt"),
    ("ask spec hf dir not model", "ask 'Q?' --decomposer hf:{w}/adir"),
    ("ask spec adapter empty", "ask 'Q?' --decomposer {tiny}+adapter="),
    ("ask spec adapter missing", "ask 'Q?' --decomposer {tiny}+adapter={w}/missing"),
    ("ask spec adapter no config", "ask 'Q?' --decomposer {tiny}+adapter={w}/adapter_noconfig"),
    ("ask spec adapter no manifest", "ask 'Q?' --decomposer {tiny}+adapter={w}/adapter_plain"),
    ("ask spec adapter on api model", "ask 'Q?' --decomposer openai:gpt-4o+adapter={w}/adapter_plain"),
    ("ask spec trust without adapter", "ask 'Q?' --decomposer {tiny}+trust_adapter"),
    ("ask spec unknown provider", "ask 'Q?' --decomposer nosuchprovider:model"),
    ("ask spec provider not installed", "ask 'Q?' --decomposer fireworks:llama"),
    ("ask spec missing api key", "ask 'Q?' --mode single --decomposer openai:gpt-4o-mini --solver openai:gpt-4o-mini"),
    ("ask spec url bad port", "ask 'Q?' --decomposer 'openai:m@http://127.0.0.1:99999/v1'"),
    ("ask spec url port text", "ask 'Q?' --decomposer 'openai:m@http://127.0.0.1:abc/v1'"),
    ("ask spec url no host", "ask 'Q?' --decomposer 'openai:m@http:///v1'"),
    ("ask spec url space", "ask 'Q?' --decomposer 'openai:m@http://exa mple.com/v1'"),
    ("ask refused connection", "ask 'Q?' --mode single --decomposer {bad_url} --solver {bad_url} --timeout 2"),
    ("ask mode bogus", "ask 'Q?' --mode bogus"),
    ("ask solve bogus", "ask 'Q?' --solve bogus"),
    ("ask task bogus", "ask 'Q?' --task bogus"),
    ("ask shots bogus", "ask 'Q?' --shots two"),
    *[(f"ask max-subquestions {v}", f"ask 'Q?' --max-subquestions {v}") for v in ["0", "11", "-1", "abc", "2.5"]],
    *[(f"ask max-new-tokens {v}", f"ask 'Q?' --max-new-tokens {v}") for v in BAD_NUMBERS],
    *[(f"ask timeout {v}", f"ask 'Q?' --timeout {v}") for v in BAD_FLOATS],
    # -- draw
    ("draw out mmd", "draw --out {t}/graph.mmd"),
    ("draw out txt", "draw --out {t}/graph.txt"),
    ("draw out no suffix", "draw --out {t}/graph"),
    ("draw out dir", "draw --out {w}/adir"),
    ("draw out empty", "draw --out ''"),
    ("draw out parent is a file", "draw --out {w}/file.txt/graph.png"),
    ("draw unknown flag", "draw --png x"),
    # -- eval
    ("eval no args", "eval"),
    ("eval no out", "eval --dataset jsonl --data {w}/q.jsonl"),
    ("eval unknown dataset", "eval --dataset nosuch --data {w}/q.jsonl --out {t}/r.jsonl"),
    *[(f"eval data {name}", EVAL.replace("{w}/q.jsonl", f"{{w}}/{name}"))
      for name in ["missing.jsonl", "adir", "binary.bin", "latin1.txt", "empty.txt", "list.json", "numq.jsonl",
                   "noanswer.jsonl", "badjson.jsonl", "spaces.txt"]],
    *[(f"eval gsm8k data {name}", EVAL.replace("jsonl --data {w}/q.jsonl", f"gsm8k --data {{w}}/{name}"))
      for name in ["gsm_bad.jsonl", "binary.bin", "list.json"]],
    ("eval strategyqa not a list", "eval --dataset strategyqa --data {w}/strategy_list.json --out {t}/r.jsonl"),
    ("eval out dir", EVAL.replace("{t}/r.jsonl", "{w}/adir")),
    ("eval out parent is a file", EVAL.replace("{t}/r.jsonl", "{w}/file.txt/r.jsonl")),
    *[(f"eval out is {name}", EVAL.replace("{t}/r.jsonl", f"{{w}}/{name}"))
      for name in ["r_list.jsonl", "r_noid.jsonl", "binary.bin", "r_torn_middle.jsonl", "list.json"]],
    *[(f"eval limit {v}", f"{EVAL} --limit {v}") for v in BAD_NUMBERS],
    *[(f"eval concurrency {v}", f"{EVAL} --concurrency {v}") for v in BAD_NUMBERS],
    *[(f"eval processes {v}", f"{EVAL} --processes {v}") for v in ["0", "-2", "x"]],
    *[(f"eval timeout {v}", f"{EVAL} --timeout {v}") for v in BAD_FLOATS],
    *[(f"eval pricing {name}", f"{EVAL} --pricing {{w}}/{name}")
      for name in ["missing.json", "adir", "binary.bin", "p_list.json", "p_missing_output.json", "p_nonnumber.json",
                   "p_negative.json", "p_badjson.json", "null.json", "empty.txt"]],
    ("eval price-as no key", f"{EVAL} --price-as decomposer=nosuchkey"),
    ("eval price-as bad role", f"{EVAL} --price-as teacher=13b-student"),
    ("eval price-as no equals", f"{EVAL} --price-as decomposer"),
    ("eval exclude-ids missing", f"{EVAL} --exclude-ids {{w}}/missing.txt"),
    ("eval exclude-ids dir", f"{EVAL} --exclude-ids {{w}}/adir"),
    ("eval exclude-ids binary", f"{EVAL} --exclude-ids {{w}}/binary.bin"),
    ("eval every id excluded", f"{EVAL} --exclude-ids {{w}}/allids.txt"),
    ("eval spec nonsense", EVAL.replace("--decomposer {tiny}", "--decomposer nonsense")),
    ("eval spec missing model", EVAL.replace("--solver {tiny}", "--solver hf:{w}/missing-model")),
    ("eval spec adapter no manifest", EVAL.replace("--decomposer {tiny}", "--decomposer {tiny}+adapter={w}/adapter_plain")),
    ("eval max-subquestions 11", f"{EVAL} --max-subquestions 11"),
    ("eval mode bogus", f"{EVAL} --mode bogus"),
    # -- collect
    ("collect no args", "collect"),
    ("collect no store", "collect --dataset jsonl --data {w}/q.jsonl"),
    ("collect unknown dataset", COLLECT.replace("--dataset jsonl", "--dataset nosuch")),
    *[(f"collect data {name}", COLLECT.replace("{w}/q.jsonl", f"{{w}}/{name}"))
      for name in ["missing.jsonl", "adir", "binary.bin", "latin1.txt", "empty.txt", "list.json", "numq.jsonl",
                   "badjson.jsonl"]],
    *[(f"collect store {name}", COLLECT.replace("{t}/s.db", f"{{w}}/{name}"))
      for name in ["adir", "binary.bin", "file.txt", "other.db", "wrongformat.db", "future.db", "damaged.db",
                   "list.json"]],
    ("collect store parent is a file", COLLECT.replace("{t}/s.db", "{w}/file.txt/s.db")),
    *[(f"collect shard {v}", f"{COLLECT} --shard {v}") for v in ["3/2", "0/4", "1/0", "a/b", "2", "1/2/3", "''", "-1/2"]],
    *[(f"collect limit {v}", f"{COLLECT} --limit {v}") for v in BAD_NUMBERS],
    *[(f"collect concurrency {v}", f"{COLLECT} --concurrency {v}") for v in ["0", "-5", "x"]],
    ("collect spec nonsense", COLLECT.replace("--decomposer {tiny}", "--decomposer nonsense")),
    ("collect spec missing api key", COLLECT.replace("{tiny}", "openai:gpt-4o-mini")),
    ("collect every question fails", COLLECT.replace("{tiny}", "{bad_url}") + " --mode single --timeout 2"),
    # -- sft
    ("sft no out", "sft --store {w}/good.db"),
    ("sft no store", "sft --out {t}/sft"),
    *[(f"sft store {name}", SFT.replace("{w}/good.db", f"{{w}}/{name}"))
      for name in ["missing.db", "adir", "binary.bin", "empty.txt", "other.db", "wrongformat.db", "future.db",
                   "damaged.db", "fresh.db", "errors.db"]],
    ("sft out is a file", SFT.replace("{t}/sft", "{w}/file.txt")),
    ("sft out not empty", SFT.replace("{t}/sft", "{w}/nonempty")),
    ("sft out parent is a file", SFT.replace("{t}/sft", "{w}/file.txt/sft")),
    *[(f"sft val-fraction {v}", f"{SFT} --val-fraction {v}") for v in ["1", "1.5", "-0.1", "abc", "nan", "inf"]],
    *[(f"sft max-subquestions {v}", f"{SFT} --max-subquestions {v}") for v in ["0", "11", "-3", "x"]],
    ("sft variant bogus", f"{SFT} --variant teacher"),
    ("sft screen bogus", f"{SFT} --screen maybe"),
    ("sft answer bogus", f"{SFT} --answer both"),
    ("sft answer gold on decomposer", f"{SFT} --answer gold"),
    ("sft task bogus", f"{SFT} --task poetry"),
    ("sft screen gold nothing right", f"{SFT} --screen gold"),
    ("sft solver variant nothing usable", f"{SFT} --variant solver"),
    *[(f"sft gold data {name}", f"sft --gold-data {{w}}/{name} --out {{t}}/sft")
      for name in ["missing.jsonl", "binary.bin", "list.json", "q.jsonl"]],
    ("sft gold dataset bogus", "sft --gold-data {w}/q.jsonl --gold-dataset nosuch --out {t}/sft"),
    # -- export and llama.cpp specs (checked before any model or llama.cpp tool is needed)
    ("export no args", "export"),
    ("export no gguf", "export --base {tiny}"),
    ("export gguf not .gguf", "export --base {tiny} --gguf {t}/out.bin"),
    ("export gguf is a dir", "export --base {tiny} --gguf {w}/adir"),
    ("export into an existing file", "export --base {tiny} --gguf {w}/exists.gguf"),
    ("export nothing names the base", "export --gguf {t}/o.gguf"),
    ("export adapter missing", "export --adapter {w}/missing --gguf {t}/o.gguf"),
    ("export adapter without config", "export --adapter {w}/adapter_noconfig --gguf {t}/o.gguf"),
    ("export adapter without manifest", "export --adapter {w}/adapter_plain --gguf {t}/o.gguf"),
    ("export lora without adapter", "export --base {tiny} --lora-gguf --gguf {t}/o.gguf"),
    ("export lora as q4_k_m", "export --adapter {w}/adapter_plain --trust-adapter --lora-gguf --quant q4_k_m "
     "--gguf {t}/o.gguf"),
    ("export unknown quant", "export --base {tiny} --quant q3 --gguf {t}/o.gguf"),
    ("export base an API model", "export --base openai:gpt-4o --gguf {t}/o.gguf"),
    ("export base not a model dir", "export --base hf:{w}/adir --gguf {t}/o.gguf"),
    ("llamacpp no subcommand", "llamacpp"),
    ("llamacpp unknown subcommand", "llamacpp install"),
    ("ask llamacpp not a gguf", "ask 'Q?' --mode single --decomposer {tiny} --solver llamacpp:{w}/exists.gguf"),
    ("ask llamacpp a text file", "ask 'Q?' --mode single --decomposer {tiny} --solver llamacpp:{w}/file.txt"),
    ("ask llamacpp missing file", "ask 'Q?' --mode single --decomposer {tiny} --solver llamacpp:{w}/missing.gguf"),
    ("ask llamacpp no file", "ask 'Q?' --mode single --decomposer {tiny} --solver llamacpp:"),
    ("ask llamacpp no lora", "ask 'Q?' --mode single --decomposer {tiny} --solver 'llamacpp:{w}/exists.gguf+lora='"),
    ("ask llamacpp peft adapter", "ask 'Q?' --mode single --decomposer {tiny} --solver "
     "llamacpp:{w}/exists.gguf+adapter={w}/adapter_plain"),
    ("ask unknown engine", "ask 'Q?' --engine vllm"),
    # -- train
    ("train no args", "train"),
    ("train no out", "train --data {w}/sft_garbage"),
    *[(f"train data {name}", TRAIN.replace("{w}/sft_garbage", f"{{w}}/{name}"))
      for name in ["missing", "file.txt", "sft_empty", "sft_garbage", "sft_emptyfile", "sft_list", "sft_nomessages",
                   "sft_notassistant", "binary.bin"]],
    ("train base api spec", f"{TRAIN} --base openai:gpt-4o"),
    ("train base nonsense", f"{TRAIN} --base nonsense"),
    ("train base with adapter", f"{TRAIN} --base {{tiny}}+adapter={{w}}/adapter_plain"),
    ("train out is a file", TRAIN.replace("{t}/adapter", "{w}/file.txt")),
    ("train out not empty", TRAIN.replace("{t}/adapter", "{w}/nonempty")),
    *[(f"train {flag} {v}", f"{TRAIN} --{flag} {v}")
      for flag in ["lr", "epochs"] for v in ["x", "''"]],
    *[(f"train {flag} {v}", f"{TRAIN} --{flag} {v}")
      for flag in ["max-steps", "batch-size", "lora-r"] for v in ["x", "1.5"]],
    # -- improve
    ("improve no args", "improve"),
    ("improve no solver", IMPROVE.replace("--solver {tiny} ", "")),
    *[(f"improve samples {v}", f"{IMPROVE} --samples {v}") for v in ["1", "0", "-2", "x", "1.5"]],
    *[(f"improve temperature {v}", f"{IMPROVE} --temperature {v}") for v in BAD_FLOATS],
    *[(f"improve {flag} {v}", f"{IMPROVE} --{flag} {v}") for flag in ["rounds", "questions", "draws", "eval-limit"]
      for v in ["0", "x"]],
    ("improve draws below samples", f"{IMPROVE} --samples 4 --draws 3"),
    ("improve dataset without gold answers", IMPROVE.replace("jsonl --data {w}/q.jsonl", "break --data {w}/qdmr.csv")),
    ("improve data missing", IMPROVE.replace("{w}/q.jsonl", "{w}/missing.jsonl")),
    ("improve data not the dataset", IMPROVE.replace("{w}/q.jsonl", "{w}/noanswer.jsonl")),
    ("improve student api spec", IMPROVE.replace("--student {tiny}", "--student openai:gpt-4o-mini")),
    ("improve student gold spec", IMPROVE.replace("--student {tiny}", "--student gold:gsm8k:{w}/q.jsonl")),
    ("improve student nonsense", IMPROVE.replace("--student {tiny}", "--student nonsense")),
    ("improve solver gold spec", IMPROVE.replace("--solver {tiny}", "--solver gold:gsm8k:{w}/q.jsonl")),
    ("improve solver nonsense", IMPROVE.replace("--solver {tiny}", "--solver nonsense")),
    ("improve eval slice without eval data", f"{IMPROVE} --eval-slice {{w}}/allids.txt"),
    ("improve eval data missing", f"{IMPROVE} --eval-data {{w}}/missing.jsonl"),
    ("improve eval slice not in eval data", f"{IMPROVE} --eval-data {{w}}/q.jsonl --eval-slice {{w}}/file.txt"),
    ("improve eval takes every question", f"{IMPROVE} --eval-data {{w}}/q.jsonl"),
    ("improve prior data missing", f"{IMPROVE} --prior-data {{w}}/missing"),
    ("improve prior data not sft", f"{IMPROVE} --prior-data {{w}}/sft_empty"),
    ("improve config unreadable", f"{IMPROVE} --config {{w}}/binary.bin"),
    ("improve out is a file", IMPROVE.replace("{t}/improve", "{w}/file.txt")),
    ("improve task bogus", f"{IMPROVE} --task poetry"),
    # -- report
    ("report no files", "report"),
    *[(f"report results {name}", f"report {{w}}/{name}")
      for name in ["missing.jsonl", "empty.txt", "adir", "r_list.jsonl", "r_noid.jsonl", "r_noseconds.jsonl",
                   "r_torn_middle.jsonl", "r_badscore.jsonl", "binary.bin", "latin1.txt", "list.json", "spaces.txt"]],
    ("report one good one missing", "report {w}/results.jsonl {w}/missing.jsonl"),
    ("report markdown dir", "report {w}/results.jsonl --markdown {w}/adir"),
    ("report markdown parent is a file", "report {w}/results.jsonl --markdown {w}/file.txt/t.md"),
    ("report png dir", "report {w}/results.jsonl --png {w}/adir"),
    ("report png unknown format", "report {w}/results.jsonl --png {t}/plot.xyz"),
    ("report png no suffix", "report {w}/results.jsonl --png {t}/plot"),
    ("report png parent is a file", "report {w}/results.jsonl --png {w}/file.txt/p.png"),
    *[(f"report pricing {name}", f"report {{w}}/results.jsonl --pricing {{w}}/{name}")
      for name in ["missing.json", "binary.bin", "p_list.json", "p_nonnumber.json", "adir"]],
    # -- trace show / list
    *[(f"trace {verb} {name}", f"trace {verb} {{w}}/{name}")
      for verb in ["show", "list"]
      for name in ["missing.db", "adir", "binary.bin", "empty.txt", "other.db", "wrongformat.db", "future.db",
                   "damaged.db", "list.json"]],
    ("trace show unknown id", "trace show {w}/good.db --id nosuchrun"),
    ("trace show fresh store", "trace show {w}/fresh.db"),
    # -- trace merge
    ("trace merge no sources", "trace merge {t}/all.db"),
    *[(f"trace merge source {name}", f"trace merge {{t}}/all.db {{w}}/good.db {{w}}/{name}")
      for name in ["missing.db", "adir", "binary.bin", "other.db", "damaged.db", "future.db"]],
    *[(f"trace merge target {name}", f"trace merge {{w}}/{name} {{w}}/good.db")
      for name in ["adir", "binary.bin", "other.db", "damaged.db", "file.txt/all.db"]],
    # -- trace import
    ("trace import no file", "trace import {t}/s.db"),
    *[(f"trace import {name}", f"trace import {{t}}/s.db {{w}}/{name}")
      for name in ["missing.jsonl", "adir", "binary.bin", "latin1.txt", "empty.txt", "ls_badjson.jsonl",
                   "ls_list.jsonl", "ls_noid.jsonl", "ls_badfield.jsonl", "spaces.txt"]],
    *[(f"trace import into {name}", f"trace import {{w}}/{name} {{w}}/ls_noid.jsonl")
      for name in ["binary.bin", "other.db"]],
]


@pytest.fixture(autouse=True)
def _no_api_credentials(monkeypatch):
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def test_the_battery_is_large_and_covers_every_verb():
    verbs = {(shlex.split(args) or [""])[0] for _, args in CASES}
    assert {"ask", "draw", "eval", "collect", "sft", "train", "improve", "report", "trace", "export",
            "llamacpp"} <= verbs
    trace_verbs = {shlex.split(args)[1] for _, args in CASES if args.startswith("trace ") and len(shlex.split(args)) > 1}
    assert {"show", "list", "merge", "import"} <= trace_verbs
    assert len(CASES) >= 200 and len({name for name, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("name, args", CASES, ids=[name for name, _ in CASES])
def test_bad_input_is_one_line_and_a_non_zero_exit(name, args, world, tmp_path, tiny_model_dir, capsys):
    argv = [a.format(**_values(world, tmp_path, tiny_model_dir)) for a in shlex.split(args)]
    before = _inputs(world)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own exit, through OneLineParser
        code = exc.code
    err = capsys.readouterr().err
    assert code not in (0, None), f"exit 0 on bad input: {argv}"
    lines = [line for line in err.splitlines() if line.startswith("divconq: error")]
    assert len(lines) == 1, err[-3000:]
    assert "Traceback" not in err
    # Bad input changes no input: no file in the shared directory was written (SQLite's
    # shared-memory index and the writer locks beside a store are not the store).
    assert _inputs(world) == before


def _inputs(world):
    sidecar = ("-shm", "-wal", ".lock")
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in world.iterdir() if not p.name.endswith(sidecar)}


# --------------------------------------------------------------------------- in other processes

SUBPROCESS_CASES = [
    ("question not UTF-8", [b"ask", b"caf\xe9?"]),
    ("context path not UTF-8", [b"ask", b"Q?", b"--context", b"/tmp/\xff\xfe.txt"]),
    ("store path not UTF-8", [b"trace", b"list", b"/tmp/\xff.db"]),
]


@pytest.mark.parametrize("name, argv", SUBPROCESS_CASES, ids=[n for n, _ in SUBPROCESS_CASES])
def test_bytes_that_are_not_utf8_on_the_command_line(name, argv):
    result = subprocess.run([sys.executable.encode(), b"-m", b"divconq.cli", *argv], capture_output=True, timeout=120)
    err = result.stderr.decode(errors="replace")
    assert result.returncode == 2 and "Traceback" not in err and err.count("divconq: error") == 1, err[-2000:]


@pytest.fixture
def unreadable(world, tmp_path):
    """Copies of good inputs that the (unprivileged) process may not read or write."""
    paths = {}
    for key, name in (("data", "q.jsonl"), ("store", "good.db"), ("results", "results.jsonl")):
        target = tmp_path / name
        target.write_bytes((world / name).read_bytes())
        os.chmod(target, 0)
        paths[key] = target
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o555)
    paths["locked"] = locked
    yield paths
    os.chmod(locked, 0o755)


PERMISSION_CASES = [
    ("eval data unreadable", "eval --dataset jsonl --data {data} --out {t}/r.jsonl"),
    ("collect data unreadable", "collect --dataset jsonl --data {data} --store {t}/s.db"),
    ("trace list unreadable", "trace list {store}"),
    ("sft store unreadable", "sft --store {store} --out {t}/sft"),
    ("report unreadable", "report {results}"),
    ("ask context unreadable", "ask 'Q?' --context {data}"),
    ("draw into read-only dir", "draw --out {locked}/g.png"),
    ("report markdown into read-only dir", "report {w}/results.jsonl --markdown {locked}/t.md"),
    ("eval out in read-only dir", "eval --dataset jsonl --data {w}/q.jsonl --out {locked}/r.jsonl"),
    ("collect store in read-only dir", "collect --dataset jsonl --data {w}/q.jsonl --store {locked}/s.db"),
    ("sft out in read-only dir", "sft --store {w}/decomposed.db --out {locked}/sft --val-fraction 0"),
]


@pytest.mark.parametrize("name, args", PERMISSION_CASES, ids=[n for n, _ in PERMISSION_CASES])
def test_paths_that_cannot_be_read_or_written(name, args, unreadable, world, tmp_path):
    values = {**{k: str(v) for k, v in unreadable.items()}, "w": str(world), "t": str(tmp_path)}
    result = run_unprivileged([a.format(**values) for a in shlex.split(args)])
    errors = [line for line in result.stderr.splitlines() if line.startswith("divconq: error")]
    assert result.returncode == 2 and "Traceback" not in result.stderr and len(errors) == 1, result.stderr[-2000:]
    assert "permission denied" in errors[0].lower() or "read-only" in errors[0]
