"""Decoding speed of the student decomposer: one question at a time and batched.

Compares the measured tokens per second with a memory-bandwidth estimate: decoding
one token reads every parameter once, so tokens/s <= bandwidth / parameter bytes. The
bandwidth is measured here with a large array copy.

    python bench/decode.py [--model default] [--questions 8] [--batch 8] [--new-tokens 48] [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from divconq.nodes import prompts as P
from divconq.nodes.models import _resolve_adapter, _resolve_local_path, attach_adapter, load_causal_lm, parse_spec

QUESTIONS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?",
    "Betty is saving money for a new wallet which costs $100. Betty has only half of the money she needs. Her parents decided to give her $15 for that purpose, and her grandparents twice as much as her parents. How much more money does Betty need to buy the wallet?",
    "James writes a 3-page letter to 2 different friends twice a week. How many pages does he write a year?",
]


def bandwidth_gb_s(size_mb: int = 512, repeats: int = 5) -> float:
    """Copy bandwidth: bytes read plus bytes written per second, best of ``repeats``."""
    src = torch.ones(size_mb * 2**20 // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - started)
    return 2 * src.numel() * 4 / best / 1e9


def prompts_for(tokenizer, questions: list[str]) -> list[str]:
    prompt_set = P.get_prompts("math")
    rendered = []
    for q in questions:
        messages = [{"role": m.type.replace("human", "user").replace("ai", "assistant"), "content": m.content}
                    for m in P.decompose_messages(prompt_set, q)]
        rendered.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return rendered


def generate(model, tokenizer, texts: list[str], new_tokens: int) -> tuple[int, float]:
    tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    started = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    seconds = time.perf_counter() - started
    return (out.shape[1] - batch["input_ids"].shape[1]) * len(texts), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="model spec (default: the embedded student decomposer)")
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    spec = parse_spec(args.model)
    model, tokenizer = load_causal_lm(_resolve_local_path(spec))
    adapter = _resolve_adapter(spec, "decomposer")
    if adapter:
        model = attach_adapter(model, adapter, args.model)
    questions = (QUESTIONS * args.questions)[: args.questions]
    texts = prompts_for(tokenizer, questions)
    generate(model, tokenizer, texts[:1], 4)  # warm up

    single_tokens = single_seconds = 0.0
    for text in texts:
        tokens, seconds = generate(model, tokenizer, [text], args.new_tokens)
        single_tokens += tokens
        single_seconds += seconds
    batched_tokens = batched_seconds = 0.0
    for i in range(0, len(texts), args.batch):
        tokens, seconds = generate(model, tokenizer, texts[i : i + args.batch], args.new_tokens)
        batched_tokens += tokens
        batched_seconds += seconds

    params = sum(p.numel() for p in model.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bandwidth = bandwidth_gb_s()
    result = {
        "model": args.model,
        "parameters": params,
        "parameter_bytes": param_bytes,
        "dtype": str(next(model.parameters()).dtype),
        "threads": torch.get_num_threads(),
        "single_tokens_per_s": single_tokens / single_seconds,
        "batched_tokens_per_s": batched_tokens / batched_seconds,
        "batch": args.batch,
        "copy_bandwidth_gb_s": bandwidth,
        "bandwidth_bound_tokens_per_s": bandwidth * 1e9 / 2 / param_bytes,  # reads only: half the copy traffic
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.model}: {params / 1e6:.1f} M parameters, {param_bytes / 2**20:.0f} MiB ({result['dtype']}), {result['threads']} threads")
    print(f"one question at a time : {result['single_tokens_per_s']:8.1f} tokens/s")
    print(f"batched ({args.batch:>2} questions) : {result['batched_tokens_per_s']:8.1f} tokens/s")
    print(f"bandwidth bound        : {result['bandwidth_bound_tokens_per_s']:8.1f} tokens/s "
          f"(copy bandwidth {bandwidth:.1f} GB/s; one token reads every parameter once)")


if __name__ == "__main__":
    main()
