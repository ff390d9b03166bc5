"""Teacher throughput: generated tokens per second of the two llama.cpp servers, one
request at a time and several at once (what `divconq collect/eval --concurrency K` does).

    python bench/teacher_speed.py [--requests 4] [--max-tokens 128] [--json]

llama_cpp.server answers one request at a time whatever the concurrency; llama-server
(divconq llamacpp build) decodes up to --parallel requests in one batch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from teacher import llama_server, native_server, teacher_gguf

from divconq.distill.datasets import load_dataset

GSM8K_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "train.jsonl"


def complete(url: str, question: str, max_tokens: int) -> int:
    """One chat completion of exactly ``max_tokens`` tokens if the model keeps going; its token count."""
    body = {"model": "teacher", "max_tokens": max_tokens, "temperature": 0.0,
            "messages": [{"role": "user", "content": f"Solve step by step.\n\n{question}"}]}
    request = urllib.request.Request(f"{url}/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())["usage"]["completion_tokens"]


def measure(url: str, questions: list[str], max_tokens: int, concurrency: int) -> dict[str, float]:
    complete(url, questions[0], 8)  # warm: load pages, build the first graph
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        tokens = sum(pool.map(lambda q: complete(url, q, max_tokens), questions))
    seconds = time.perf_counter() - start
    return {"concurrency": concurrency, "requests": len(questions), "tokens": tokens,
            "seconds": round(seconds, 1), "tokens_per_s": round(tokens / seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    questions = [e.question for e in load_dataset("gsm8k", GSM8K_TRAIN)[: args.requests]]
    native = native_server()
    servers = [("llama_cpp.server", None)] + ([("llama-server", native)] if native else [])
    rows = []
    for name, binary in servers:
        with llama_server(teacher_gguf(), binary=binary, parallel=2) as url:
            for concurrency in (1, 2):
                rows.append({"server": name, **measure(url, questions, args.max_tokens, concurrency)})
                if not args.json:
                    print(rows[-1], flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))
    if native is None:  # on stderr: --json output stays parseable
        print("llama-server is not built (divconq llamacpp build, or set LLAMA_SERVER): measured llama_cpp.server only",
              file=sys.stderr)


if __name__ == "__main__":
    main()
