"""Do the engines decompose alike? The shipped student's sub-questions through transformers
and through llama.cpp, greedy, on held-out GSM8K questions, compared question by question.

Against ``default`` on transformers (the de-quantized Q4_1 base with the adapter merged in
fp32): llama.cpp on the shipped Q4_1 GGUF with the adapter as an f32 LoRA GGUF, and with
--merged the student exported by ``divconq export`` (Q8_0: what ``default`` runs on llama.cpp). Every
difference is listed with both texts. Written to bench/results/engine_agreement.json.

    python bench/engine_agreement.py [--questions 20] [--merged q8_0] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from decode import heldout_questions

from divconq.nodes import prompts as P
from divconq.nodes.chat_llamacpp import load_llamacpp_chat_model
from divconq.nodes.gguf_files import adapter_fingerprint, cached_lora_gguf, export_gguf
from divconq.nodes.models import DEFAULT_ADAPTER_DIR, default_gguf_path, load_chat_model
from divconq.nodes.parsing import parse_subquestions
from divconq.safeio import atomic_write

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "engine_agreement.json"


def decompose(model, questions: list[str]) -> list[dict]:
    out = []
    for question in questions:
        text = model.invoke(P.decompose_messages(P.get_prompts("math"), question)).content
        out.append({"text": text, "subquestions": parse_subquestions(text, 3, question)})
    return out


def compare(reference: list[dict], other: list[dict], questions: list[str]) -> dict:
    differ = [{"question": q, "transformers": a["text"], "other": b["text"],
               "same_subquestions": a["subquestions"] == b["subquestions"],
               "same_count": len(a["subquestions"]) == len(b["subquestions"])}
              for q, a, b in zip(questions, reference, other) if a["text"] != b["text"]]
    return {"identical_text": len(questions) - len(differ),
            "identical_subquestions": sum(a["subquestions"] == b["subquestions"] for a, b in zip(reference, other)),
            "same_number_of_subquestions": sum(len(a["subquestions"]) == len(b["subquestions"])
                                               for a, b in zip(reference, other)),
            "questions": len(questions), "differences": differ}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--merged", choices=["q8_0", "q4_k_m", "f32"], help="also compare an exported merged student")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    started = time.time()
    questions = heldout_questions(args.questions)
    reference = decompose(load_chat_model("default", role="decomposer", engine="transformers"), questions)
    engines = {"llamacpp q4_1+lora": load_llamacpp_chat_model(default_gguf_path(), cached_lora_gguf(DEFAULT_ADAPTER_DIR))}
    result = {"adapter_fingerprint": adapter_fingerprint(DEFAULT_ADAPTER_DIR), "slice": "bench/results/gsm8k_heldout.txt",
              "comparisons": {}}
    with tempfile.TemporaryDirectory(prefix="agreement-") as work:
        if args.merged:
            merged = Path(work) / f"student-{args.merged}.gguf"
            export_gguf(DEFAULT_ADAPTER_DIR, merged, quant=args.merged, progress=False)
            engines[f"llamacpp {args.merged} merged"] = load_llamacpp_chat_model(merged)  # q8_0: what default runs
        for name, model in engines.items():
            result["comparisons"][name] = compare(reference, decompose(model, questions), questions)
    result["seconds"] = time.time() - started
    atomic_write(args.out, json.dumps(result, indent=2) + "\n", what="results file")
    for name, summary in result["comparisons"].items():
        print(f"{name}: identical text {summary['identical_text']}/{summary['questions']}, identical sub-questions "
              f"{summary['identical_subquestions']}, same number of sub-questions {summary['same_number_of_subquestions']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
