"""Decoding speed of the shipped student decomposer, engine by engine, in one run.

Rows, on the same model (the embedded SmolLM2-135M plus the shipped adapter) and the same
decomposition prompts, one stream and batched:

- transformers, fp32 (the adapter merged);
- llama.cpp, the student merged and exported as Q8_0 (what ``default`` runs) and as Q4_K_M
  (``divconq export``);
- llama.cpp on the shipped Q4_1 GGUF with the adapter as an f32 LoRA GGUF applied at run time.

Tokens per second count decoding only, as the bound does: the prompt's prefill is left out
(llama-server's own timings; for transformers, a one-token run is subtracted). Each row
has its bandwidth bound: decoding a step reads every weight once, so tokens/s <=
batch x read bandwidth / bytes of weights (measured here by summing a 512 MiB array; the copy
bandwidth is recorded beside it: session 6 bounded by half of it, which llama.cpp "beat"). Rows of one stream also carry the decomposition
latency per question: the real decomposer chat model, the full 256-token cap, GSM8K test
questions of the held-out slice, one at a time. Written to bench/results/decode.json.

    python bench/decode.py [--questions 4] [--batch 4] [--new-tokens 32] [--decompose 4] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from divconq.distill.datasets import load_dataset
from divconq.distill.slices import read_slice, select
from divconq.nodes import prompts as P
from divconq.nodes.chat_llamacpp import load_llamacpp_chat_model, shared_server, stop_servers
from divconq.nodes.gguf_files import adapter_fingerprint, cached_lora_gguf, export_gguf
from divconq.nodes.llamacpp import ServerSettings
from divconq.nodes.models import (
    DEFAULT_ADAPTER_DIR, attach_adapter, default_gguf_path, default_model_dir, load_causal_lm, load_chat_model,
)
from divconq.safeio import atomic_write

ROOT = Path(__file__).resolve().parents[1]
GSM8K_TEST = ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"
SLICE = ROOT / "bench" / "results" / "gsm8k_heldout.txt"
DEFAULT_OUT = ROOT / "bench" / "results" / "decode.json"


def _best_seconds(step, repeats: int) -> float:
    """The fastest of ``repeats`` timed runs of ``step``: a busy machine only ever slows one down."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - started)
    return best


def bandwidth_gb_s(size_mb: int = 512, repeats: int = 5) -> float:
    """Copy bandwidth: bytes read plus bytes written per second, best of ``repeats``."""
    src = torch.ones(size_mb * 2**20 // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / _best_seconds(lambda: dst.copy_(src), repeats) / 1e9


def read_bandwidth_gb_s(size_mb: int = 512, repeats: int = 5) -> float:
    """Read bandwidth: bytes summed per second, best of ``repeats``. Decoding reads the weights
    and writes almost nothing, so this, not half the copy rate, is what bounds it (a copy also
    pays for the writes, and for reading each destination line before writing it)."""
    src = torch.ones(size_mb * 2**20 // 4, dtype=torch.float32)
    return src.numel() * 4 / _best_seconds(src.sum, repeats) / 1e9


def chat_messages(question: str) -> list[dict[str, str]]:
    return [{"role": m.type.replace("human", "user").replace("ai", "assistant"), "content": m.content}
            for m in P.decompose_messages(P.get_prompts("math"), question)]


def heldout_questions(n: int) -> list[str]:
    return [e.question for e in select(load_dataset("gsm8k", GSM8K_TEST), read_slice(SLICE))[:n]]


# --------------------------------------------------------------------------- transformers


def transformers_rows(questions: list[str], batch: int, new_tokens: int) -> tuple[list[dict], int]:
    model, tokenizer = load_causal_lm(str(default_model_dir()))
    model = attach_adapter(model, DEFAULT_ADAPTER_DIR, "default")
    texts = [tokenizer.apply_chat_template(chat_messages(q), tokenize=False, add_generation_prompt=True) for q in questions]
    tokenizer.padding_side = "left"  # decoder-only models continue from the right edge

    def run(group: list[str], count: int) -> float:
        inputs = tokenizer(group, return_tensors="pt", padding=True, add_special_tokens=False)
        started = time.perf_counter()
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=count, min_new_tokens=count, do_sample=False,
                           pad_token_id=tokenizer.pad_token_id)
        return time.perf_counter() - started

    def generate(group: list[str]) -> tuple[int, float]:
        # Decoding only: a one-token run (the prompt's prefill) is subtracted, as llama.cpp's timings do;
        # the best of two runs each, since a busy machine makes single runs jitter.
        full, prefill = (min(run(group, count) for _ in range(2)) for count in (new_tokens, 1))
        return (new_tokens - 1) * len(group), full - prefill

    run(texts[:1], 4)  # warm up
    rows = []
    for size in (1, batch):
        timed = [generate(texts[i : i + size]) for i in range(0, len(texts), size)]
        rows.append({"engine": "transformers", "format": "fp32", "batch": size,
                     "tokens_per_s": sum(t for t, _ in timed) / sum(s for _, s in timed)})
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    del model
    return rows, weight_bytes


# --------------------------------------------------------------------------- llama.cpp


def complete(url: str, question: str, new_tokens: int) -> tuple[int, float]:
    """One greedy completion of exactly ``new_tokens`` tokens (end of turn ignored): the tokens
    decoded and the server's decoding seconds (its timings leave the prompt's prefill out)."""
    body = {"messages": chat_messages(question), "max_tokens": new_tokens, "temperature": 0, "ignore_eos": True}
    request = urllib.request.Request(f"{url}/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        timings = json.loads(response.read())["timings"]
    return timings["predicted_n"], timings["predicted_ms"] / 1000


def llamacpp_rows(fmt: str, gguf: Path, lora: list[Path], questions: list[str], batch: int,
                  new_tokens: int) -> list[dict]:
    url = shared_server(gguf, lora, ServerSettings(parallel=batch)).url
    complete(url, questions[0], 4)  # warm up
    rows = []
    for size in (1, batch):
        tokens = seconds = 0.0
        for i in range(0, len(questions), size):
            with ThreadPoolExecutor(size) as pool:
                timed = list(pool.map(lambda q: complete(url, q, new_tokens), questions[i : i + size]))
            # The group's requests decode together: its decoding lasts as long as its longest one.
            tokens, seconds = tokens + sum(n for n, _ in timed), seconds + max(s for _, s in timed)
        rows.append({"engine": "llamacpp", "format": fmt, "batch": size, "tokens_per_s": tokens / seconds})
    return rows


def gguf_weight_bytes(paths: list[Path]) -> int:
    from gguf import GGUFReader

    return sum(int(t.n_bytes) for path in paths for t in GGUFReader(path).tensors)


# --------------------------------------------------------------------------- decomposition latency


def decompose_seconds(model, questions: list[str]) -> float:
    model.invoke(P.decompose_messages(P.get_prompts("math"), questions[0]))  # warm up
    started = time.perf_counter()
    for question in questions:
        model.invoke(P.decompose_messages(P.get_prompts("math"), question))
    return (time.perf_counter() - started) / len(questions)


def llamacpp_variants(work: Path) -> dict[str, tuple[Path, list[Path]]]:
    """The student as llama.cpp runs it: merged and exported, and as ``default`` runs it."""
    variants = {}
    for quant in ("q8_0", "q4_k_m"):
        merged = work / f"student-{quant}.gguf"
        export_gguf(DEFAULT_ADAPTER_DIR, merged, quant=quant, progress=False)
        variants[quant] = (merged, [])
    variants["q4_1+lora"] = (default_gguf_path(), [cached_lora_gguf(DEFAULT_ADAPTER_DIR)])
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=4, help="prompts per speed row")
    parser.add_argument("--batch", type=int, default=4, help="requests decoded together in the batched rows")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per prompt in the speed rows")
    parser.add_argument("--decompose", type=int, default=4, help="questions for the decomposition latency")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    load_before, started = os.getloadavg(), time.time()

    questions = heldout_questions(max(args.questions, args.decompose))
    speed_questions = (questions * args.questions)[: args.questions]
    decompose_questions = questions[: args.decompose]
    bandwidth, read_bandwidth = bandwidth_gb_s(), read_bandwidth_gb_s()
    rows, fp32_bytes = transformers_rows(speed_questions, args.batch, args.new_tokens)
    weight_bytes = {"fp32": fp32_bytes}
    rows[0]["decompose_seconds_per_q"] = decompose_seconds(
        load_chat_model("default", role="decomposer", engine="transformers"), decompose_questions)

    with tempfile.TemporaryDirectory(prefix="decode-") as work:
        for fmt, (gguf, lora) in llamacpp_variants(Path(work)).items():
            fmt_rows = llamacpp_rows(fmt, gguf, lora, speed_questions, args.batch, args.new_tokens)
            weight_bytes[fmt] = gguf_weight_bytes([gguf, *lora])
            decomposer = load_llamacpp_chat_model(gguf, lora[0] if lora else None, label=f"student-{fmt}")
            fmt_rows[0]["decompose_seconds_per_q"] = decompose_seconds(decomposer, decompose_questions)
            stop_servers()
            rows += fmt_rows

    for row in rows:
        # Each decoding step reads every weight once; a batch shares that read.
        row["bound_tokens_per_s"] = row["batch"] * read_bandwidth * 1e9 / weight_bytes[row["format"]]
        row.setdefault("decompose_seconds_per_q", None)
    result = {
        "model": "default: SmolLM2-135M-Instruct + nodes/default_adapter",
        "adapter_fingerprint": adapter_fingerprint(DEFAULT_ADAPTER_DIR),
        "copy_bandwidth_gb_s": bandwidth, "read_bandwidth_gb_s": read_bandwidth,
        "weight_bytes": weight_bytes, "cores": os.cpu_count(),
        "new_tokens": args.new_tokens, "questions": args.questions, "decompose_questions": args.decompose,
        "nice": os.nice(0), "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "seconds": time.time() - started,
        "rows": [{key: row[key] for key in ROW_KEYS} for row in rows],
    }
    atomic_write(args.out, json.dumps(result, indent=2) + "\n", what="results file")
    print(f"{'engine':<13}{'format':<11}{'batch':>5}{'tokens/s':>10}{'bound':>9}{'of bound':>9}{'s/q':>7}")
    for row in result["rows"]:
        latency = f"{row['decompose_seconds_per_q']:.2f}" if row["decompose_seconds_per_q"] else "-"
        print(f"{row['engine']:<13}{row['format']:<11}{row['batch']:>5}{row['tokens_per_s']:>10.1f}"
              f"{row['bound_tokens_per_s']:>9.1f}{row['tokens_per_s'] / row['bound_tokens_per_s']:>9.0%}{latency:>7}")
    print(f"read bandwidth {read_bandwidth:.1f} GB/s (copy {bandwidth:.1f}); load average {load_before[0]:.1f} before, "
          f"{result['load_average_after'][0]:.1f} after; wrote {args.out}")


ROW_KEYS = ("engine", "format", "batch", "tokens_per_s", "bound_tokens_per_s", "decompose_seconds_per_q")

if __name__ == "__main__":
    main()
