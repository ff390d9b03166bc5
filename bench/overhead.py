"""The graph's own overhead per question, against a plain function making the same calls.

Both sides call the same instant fake chat models with the same prompts, so the
difference is LangGraph's scheduling, state handling and callbacks. Prints the median
per question, the ratio to the plain function, and the overhead in microseconds.

    python bench/overhead.py [--questions 300] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any, Callable

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from divconq.graph import build_graph
from divconq.nodes import prompts as P
from divconq.nodes.parsing import extract_answer, parse_next_subquestion, parse_subquestions

QUESTION = "Natalia sold clips to 48 of her friends in April, and half as many in May. How many clips did she sell?"
DECOMPOSITION = "1. How many clips did she sell in May?\n2. How many clips did she sell in April and May?"


class Instant(BaseChatModel):
    """Answers at once from a fixed function of the prompt: no model time at all."""

    reply: Callable[[list], str]

    def _generate(self, messages: list, stop: Any = None, run_manager: Any = None, **kw: Any) -> ChatResult:
        usage = {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}
        return ChatResult(generations=[ChatGeneration(message=AIMessage(self.reply(messages), usage_metadata=usage))])

    @property
    def _llm_type(self) -> str:
        return "instant"


def decomposer_reply(messages: list) -> str:
    text = str(messages[-1].content)
    if "Answered so far" in text:  # dynamic: two sub-questions, then done
        return ["How many in May?", "How many in total?", "No more sub-questions"][min(text.count("\nQ"), 2)]
    return DECOMPOSITION


DECOMPOSER = Instant(reply=decomposer_reply)
SOLVER = Instant(reply=lambda m: "The answer is: 72")
PROMPTS = P.get_prompts("math")


def plain_static(question: str) -> str:
    subs = parse_subquestions(DECOMPOSER.invoke(P.decompose_messages(PROMPTS, question)).content, 3, question)
    return extract_answer(SOLVER.invoke(P.solve_messages(PROMPTS, question, None, subs)).content)


def plain_parallel(question: str) -> str:
    subs = parse_subquestions(DECOMPOSER.invoke(P.decompose_messages(PROMPTS, question)).content, 3, question)
    answers = [extract_answer(SOLVER.invoke(P.solve_one_messages(PROMPTS, q, None)).content) for q in subs]
    return extract_answer(SOLVER.invoke(P.solve_final_messages(PROMPTS, question, None, subs, answers)).content)


def plain_dynamic(question: str) -> str:
    subs: list[str] = []
    answers: list[str] = []
    while len(subs) < 3:
        text = DECOMPOSER.invoke(P.next_subquestion_messages(PROMPTS, question, None, subs, answers)).content
        following = parse_next_subquestion(text, question, subs)
        if following is None:
            break
        subs.append(following)
        reply = SOLVER.invoke(P.solve_one_messages(PROMPTS, following, None, subs[:-1], answers)).content
        answers.append(extract_answer(reply))
    return extract_answer(SOLVER.invoke(P.solve_final_messages(PROMPTS, question, None, subs, answers)).content)


def time_per_call(fn: Callable[[], Any], n: int) -> list[float]:
    for _ in range(min(20, n)):  # warm up
        fn()
    times = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    rows = []
    for name, mode, solve, plain in [
        ("static (joint)", "static", "joint", plain_static),
        ("static (parallel)", "static", "parallel", plain_parallel),
        ("dynamic", "dynamic", "joint", plain_dynamic),
    ]:
        graph = build_graph(DECOMPOSER, SOLVER, mode=mode, solve=solve).compile()
        graph_times = time_per_call(lambda: graph.invoke({"question": QUESTION}), args.questions)
        plain_times = time_per_call(lambda: plain(QUESTION), args.questions)
        g, p = statistics.median(graph_times), statistics.median(plain_times)
        rows.append({"route": name, "graph_us": g * 1e6, "plain_us": p * 1e6, "ratio": g / p, "overhead_us": (g - p) * 1e6})

    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"median per question over {args.questions} questions, instant fake models")
    print(f"{'route':<20}{'graph us':>12}{'plain us':>12}{'ratio':>8}{'overhead us':>14}")
    for r in rows:
        print(f"{r['route']:<20}{r['graph_us']:>12.0f}{r['plain_us']:>12.0f}{r['ratio']:>8.2f}{r['overhead_us']:>14.0f}")


if __name__ == "__main__":
    main()
