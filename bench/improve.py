"""Beyond the teacher: rounds of ``divconq improve`` on GSM8K on this CPU machine (issue 16).

Solver: the teacher, Qwen2.5-Coder-1.5B-Instruct through llama.cpp (bench/teacher.py),
answers the held-out questions; the samples are screened by it too, or by a cheaper
solver (``--screen-url``, e.g. a 0.5B model on another llama.cpp server), and the report
names both. Student: the embedded SmolLM2-135M-Instruct with a LoRA adapter.

So that a round's gain is the kept data's and nothing else's, round 0 is by default a
student trained here, by the same trainer with the same settings (the recipe's), on the
prior data alone: the recipe's gold decompositions outside the slice (``divconq.distill.recipe.build_data``;
with ``--teacher-store`` its teacher traces too). Every round then retrains the base on
that prior data plus the kept sets. ``--start shipped`` starts from the shipped adapter
instead (its teacher traces are not in the prior data then, unless given).

Score: GSM8K exact match on the fixed held-out slice ``bench/results/gsm8k_heldout.txt``
(its first ``--eval-questions``), every round paired question by question with round 0
(``divconq.distill.stats.paired_bootstrap``), and the last round with the teacher-static
row of ``bench/paper_cpu.py`` where its per-question results exist. Resumable: every
stage and round continues where it stopped.

    python bench/improve.py --work /work/runs/improve --rounds 2 --questions 200 --samples 4 \\
        --temperature 0.8 --eval-questions 100 [--teacher-url http://127.0.0.1:8080/v1] [--screen-url URL]
    python bench/improve.py --work /work/runs/improve --table-only        # the report from what exists

A training choice over the same screening (its round 0 and round 1 samples copied from another run):

    python bench/improve.py --work /work/runs/improve_on --screened-from /work/runs/improve [same sampling flags] \
        --train-from student --prior none --report-name improve_train_on

Writes bench/results/improve.{md,json,png} (``--results DIR`` writes them elsewhere, e.g. for a smoke run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

from paper_cpu import DATA, RESULTS, ROOT, SLICE, Setup, repo_path, row_summary
from teacher import llama_server, native_server, teacher_gguf

from divconq.distill.evaluate import read_results
from divconq.distill.self_improve import HeldOut, ImproveConfig, NoSignalError, improve
from divconq.distill.stats import paired_bootstrap, paired_rows
from divconq.contract import TRAIN_FROM
from divconq.errors import DivconqError
from divconq.nodes.models import require_server
from divconq.safeio import atomic_path, atomic_write

STATIC_RESULTS = RESULTS / "paper_cpu" / "static.jsonl"  # teacher decomposes and solves: the row to beat
GOAL_POINTS = 3.0  # the goal: at least +3 EM over round 0, the paired CI excluding 0
GOAL_COST_RATIO = 0.1  # and above teacher-static at no more than 1/10 of its decomposition cost
ROOT_DATA = DATA.parent  # ../shared/data: the recipe's gold sources


def _recipe_train_config() -> Any:
    from divconq.distill.recipe import RecipeConfig

    return RecipeConfig().train


def _start_student(args: argparse.Namespace) -> tuple[str, Path | None]:
    """The round 0 student and the prior data every round trains on again."""
    if args.student:
        return args.student, args.prior_data
    from divconq.distill.recipe import TRAINING_IDS_FILE, RecipeConfig, build_data
    from divconq.distill.slices import read_slice
    from divconq.distill.train import finetune

    prior = args.work / "prior" / "sft"
    ids_file = args.work / "prior" / TRAINING_IDS_FILE
    if not ids_file.is_file():  # built whole or not at all: a stopped build starts over
        print(f"[{time.strftime('%H:%M:%S')}] prior data: building the recipe's gold decompositions", flush=True)
        shutil.rmtree(args.work / "prior", ignore_errors=True)
        held_out = frozenset(read_slice(args.slice).ids) if args.slice != "none" else frozenset()
        _, _, ids = build_data(ROOT_DATA, args.work / "prior", args.teacher_store, RecipeConfig(), held_out)
        atomic_write(ids_file, "".join(f"{i}\n" for i in sorted(ids)))
    if args.start == "shipped":
        return "default", prior
    adapter = args.work / "start_adapter"
    if not (adapter / "divconq_adapter.json").is_file():
        print(f"[{time.strftime('%H:%M:%S')}] round 0 student: training on the prior data alone", flush=True)
        finetune(prior, base="default", out=adapter, config=_recipe_train_config(), resume=True)
    # The ids it saw beside it, as the recipe does: improve refuses a held-out slice that overlaps them.
    atomic_write(adapter / TRAINING_IDS_FILE, ids_file.read_text())
    return f"default+adapter={adapter}", prior


@contextlib.contextmanager
def _server(url: str | None, gguf: Path | None, port: int, parallel: int, what: str) -> Iterator[str | None]:
    """An OpenAI base URL: the one given (checked), or a llama.cpp server started here, or None."""
    if url:
        try:
            require_server(url, f"`python bench/teacher.py --port {port} &`, or drop the URL to let this script start one")
        except DivconqError as exc:
            raise SystemExit(f"improve: {what}: {exc}") from None
        yield url
    elif gguf:
        with llama_server(gguf, port=port, parallel=parallel, binary=native_server()) as started:
            yield started
    else:
        yield None


def run(args: argparse.Namespace) -> None:
    config = ImproveConfig(samples=args.samples, temperature=args.temperature, rounds=args.rounds,
                           questions=args.questions, draws=args.draws, max_new_tokens=args.max_new_tokens,
                           concurrency=args.concurrency, train_from=args.train_from)
    teacher_gguf_path = None if (args.solver or args.teacher_url) else teacher_gguf()
    with _server(args.teacher_url, teacher_gguf_path, args.teacher_port, args.concurrency, "teacher") as teacher_url, \
            _server(args.screen_url, args.screen_gguf, args.screen_port, args.concurrency, "screening solver") as screen_url:
        solver = args.solver or f"openai:teacher@{teacher_url}"
        screen = args.screen_solver or (f"openai:screen@{screen_url}" if screen_url else None)
        student, prior = _start_student(args)
        prior = None if args.prior == "none" else prior
        screened_from = args.screened_from / "improve" if args.screened_from else None
        heldout = HeldOut(args.eval_data, None if args.slice == "none" else args.slice, args.eval_questions)
        try:
            improve(student, solver, dataset="gsm8k", data=args.data, out=args.work / "improve", screen_solver=screen,
                    heldout=heldout, prior_data=prior, screened_from=screened_from, config=config,
                    train_config=_recipe_train_config(),
                    timeout=args.timeout)
        except NoSignalError as exc:
            print(f"improve: {exc}", flush=True)  # the report says so too


# --------------------------------------------------------------------------- the report


def _reference(rounds: list[dict]) -> dict | None:
    """The teacher-static row on the questions the last round ran, and the last round against it."""
    last = rounds[-1]
    static = read_results(STATIC_RESULTS)
    mine = read_results(ROOT / last["results_file"]) if last.get("results_file") else []
    if not static or not mine:
        return None
    summary = row_summary("static", static, None, Setup(teacher="openai:teacher"))
    run_scores, base_scores = paired_rows(mine, static)
    paired = paired_bootstrap(run_scores, base_scores).to_dict() if run_scores else None
    dollars = summary["roles"]["decomposer"]["dollars_per_q"]
    mine_dollars = last.get("decomposer_dollars_per_q")
    return {"results_file": str(STATIC_RESULTS.relative_to(RESULTS.parent.parent)), "n": summary["n"],
            "score": summary["score"], "decomposer_dollars_per_q": dollars,
            "last_round": last["round"], "last_round_vs_static": paired,
            "cost_ratio": mine_dollars / dollars if dollars and mine_dollars is not None else None}


def _goals(rounds: list[dict], reference: dict | None) -> list[str]:
    """What the issue asks, read off the figures: met, not met, or not measured yet."""
    lines = []
    improved = [r for r in rounds[1:] if r.get("difference") is not None]
    if not improved:
        lines.append("- Gain over round 0: not measured (no round after round 0 was scored).")
    for r in improved:
        met = r["difference"] >= GOAL_POINTS and r["ci_low"] > 0
        lines.append(f"- Round {r['round']} - round 0: {r['difference']:+.1f} points, paired 95% CI "
                     f"[{r['ci_low']:+.1f}, {r['ci_high']:+.1f}] (n={r['paired_n']}): goal (>= +{GOAL_POINTS:.0f}, CI "
                     f"excluding 0) {'met' if met else 'not met'}.")
    if reference and reference["last_round_vs_static"]:
        diff, ratio = reference["last_round_vs_static"], reference["cost_ratio"]
        above = diff["ci_low"] > 0
        cheap = ratio is not None and ratio <= GOAL_COST_RATIO
        ratio_text = "n/a" if ratio is None else f"{ratio:.3f}"
        lines.append(f"- Round {reference['last_round']} - teacher-static: {diff['difference']:+.1f} points "
                     f"[{diff['ci_low']:+.1f}, {diff['ci_high']:+.1f}] (n={diff['n']}), decomposition cost ratio "
                     f"{ratio_text}: goal (above it, at <= {GOAL_COST_RATIO:g} of its cost) "
                     f"{'met' if above and cheap else 'not met'}.")
    elif reference:
        lines.append(f"- Against teacher-static: not measured (round {reference['last_round']} ran none of the questions "
                     f"of {reference['results_file']}).")
    else:
        lines.append(f"- Against teacher-static: not measured ({STATIC_RESULTS.name} missing or no round scored).")
    return lines


def _markdown(summary: dict, reference: dict | None) -> str:
    settings, rounds = summary["settings"], summary["rounds"]
    held = settings.get("heldout") or {}
    n = max((r["heldout_n"] for r in rounds), default=0)
    slice_text = (f"the first {n} questions of the fixed slice {held.get('slice')}" if held.get("slice")
                  else f"{n} held-out questions of {held.get('data')}")

    def cell(value: Any, pattern: str) -> str:
        return "n/a" if value is None else pattern.format(value)

    lines = [
        f"Student (round 0): `{settings['student']}`. Held-out solver: `{settings['solver']}`. Screening solver: "
        f"`{settings['screen_solver']}`. Held-out EM on {slice_text}. K={settings['samples']} distinct samples of "
        f"{settings['draws'] or 2 * settings['samples']} draws at temperature {settings['temperature']}, "
        f"{settings['questions'] or 'all'} questions a round. Prior data: `{settings['prior_data']}`. Each round "
        + ("trains the round's student on from its adapter." if settings.get("train_from") == "student"
           else "trains a new adapter on the base."),
        *[f"Round {r['round']}'s samples and screening were copied from `{r['screened_from']}` (its wall time counts "
          "them)." for r in rounds if r.get("screened_from")],
        "",
        "| round | training questions | samples screened | accept rate | solved by all / none / no usable sample | "
        "kept questions | train examples | held-out EM | EM - round 0 [95% paired CI] | decomposer tokens/q | "
        "decomposition $/q | wall time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rounds:
        versus = "(reference)" if r["round"] == 0 else (
            "n/a" if r["difference"] is None else
            f"{r['difference']:+.1f} [{r['ci_low']:+.1f}, {r['ci_high']:+.1f}] (n={r['paired_n']})")
        signal = "-" if r["round"] == 0 else f"{r['solved_by_all']} / {r['solved_by_none']} / {r['no_usable_sample']}"
        lines.append(
            f"| {r['round']} | {r['n']} | {cell(r['samples_screened'], '{}')} | "
            f"{cell(None if r['accept_rate'] is None else 100 * r['accept_rate'], '{:.1f}%')} | {signal} | "
            f"{cell(r['kept_questions'], '{}')} | {cell(r['train_examples'], '{}')} | {cell(r['score'], '{:.1f}')} | "
            f"{versus} | {cell(r['decomposer_tokens_per_q'], '{:.0f}')} | "
            f"{cell(r['decomposer_dollars_per_q'], '{:.7f}')} | {r['seconds']:.0f} s |")
    stopped = summary.get("stopped_round")
    if stopped:
        accept = "n/a" if stopped["accept_rate"] is None else f"{100 * stopped['accept_rate']:.1f}%"
        lines.append(f"| {stopped['round']} (stopped) | {stopped['questions']} | {stopped['samples_screened']} | "
                     f"{accept} | {stopped['solved_by_all']} / {stopped['solved_by_none']} / "
                     f"{stopped['no_usable_sample']} | {stopped['kept_questions']} | - | not retrained | - | - | - | - |")
    if reference:
        lines += ["", f"Teacher-static (`{reference['results_file']}`, n={reference['n']}): EM {reference['score']:.1f}, "
                      f"decomposition ${reference['decomposer_dollars_per_q']:.7f}/q."]
    if summary.get("stopped"):
        lines += ["", f"Stopped: {summary['stopped']}"]
    lines += ["", *_goals(rounds, reference)]
    return "\n".join(lines)


def _plot(summary: dict, reference: dict | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [r for r in summary["rounds"] if r["score"] is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if scored:
        base = scored[0]["score"]
        xs = [r["round"] for r in scored]
        ys = [r["score"] for r in scored]
        # The bars are the paired CI of each round's difference from round 0, drawn around its score.
        low = [r["score"] - (base + r["ci_low"]) if r["ci_low"] is not None else 0 for r in scored]
        high = [(base + r["ci_high"]) - r["score"] if r["ci_high"] is not None else 0 for r in scored]
        ax.errorbar(xs, ys, yerr=[low, high], marker="o", capsize=4, label="student (paired 95% CI vs round 0)")
        for r in scored[1:]:
            accept = "" if r["accept_rate"] is None else f"accept {100 * r['accept_rate']:.0f}%"
            ax.annotate(accept, (r["round"], r["score"]), fontsize=8, xytext=(6, -12), textcoords="offset points")
        ax.set_xticks(xs)
    if reference and reference["last_round_vs_static"]:  # a level to read against only on the same questions
        ax.axhline(reference["score"], linestyle="--", color="grey", label=f"teacher-static (n={reference['n']})")
    ax.set_xlabel("round")
    ax.set_ylabel("held-out GSM8K EM")
    settings = summary["settings"]
    ax.set_title(f"divconq improve: solver {settings['solver']}, screened by {settings['screen_solver']}"[:100],
                 fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, "plot") as scratch:
        fig.savefig(scratch, dpi=120, format="png")
    plt.close(fig)


def write_report(work: Path, results: Path, name: str = "improve") -> str:
    """bench/results/<name>.{md,json,png} from the run's improve.json."""
    source = work / "improve" / "improve.json"
    if not source.is_file():
        return f"no rounds yet: {source} does not exist"
    summary = json.loads(source.read_text())
    out = results / name
    for r in summary["rounds"]:  # each round's per-question results, committed beside the report
        committed = out / f"round_{r['round']}.jsonl"
        atomic_write(committed, (work / "improve" / f"round_{r['round']}" / "heldout.jsonl").read_text())
        r["results_file"] = repo_path(committed)
    reference = _reference(summary["rounds"])
    table = _markdown(summary, reference)
    record = {"rounds": summary["rounds"], "settings": summary["settings"], "stopped": summary.get("stopped"),
              "stopped_round": summary.get("stopped_round"), "teacher_static": reference}
    atomic_write(out.with_suffix(".md"), table + "\n")
    atomic_write(out.with_suffix(".json"), json.dumps(record, indent=2, default=str) + "\n")
    _plot(summary, reference, out.with_suffix(".png"))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("improve_work"), help="where the run's files go (resumable)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--questions", type=int, default=200, help="training questions a round (the budget)")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--draws", type=int, help="draws per question (default: 2 x samples)")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--eval-questions", type=int, default=100, help="the first N questions of the slice")
    parser.add_argument("--start", choices=["trained", "shipped"], default="trained",
                        help="round 0: a student trained here on the prior data, or the shipped adapter")
    parser.add_argument("--train-from", choices=TRAIN_FROM, default="base",
                        help="each round trains a new adapter on the base, or the round's student on from its adapter")
    parser.add_argument("--prior", choices=["replay", "none"], default="replay",
                        help="train on the prior data again with the kept set, or on the kept set alone")
    parser.add_argument("--screened-from", type=Path, metavar="WORK",
                        help="the --work of another run with the same sampling: reuse its round 0 and round 1 "
                        "screening, so that only the training differs")
    parser.add_argument("--teacher-store", type=Path, help="teacher traces to add to the prior data (the recipe's)")
    parser.add_argument("--teacher-url", help="an already running teacher server (OpenAI base URL)")
    parser.add_argument("--teacher-port", type=int, default=8080)
    parser.add_argument("--screen-url", help="an already running screening solver server (OpenAI base URL)")
    parser.add_argument("--screen-gguf", type=Path, help="a GGUF to serve as the screening solver")
    parser.add_argument("--screen-port", type=int, default=8081)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=512, help="as bench/paper_cpu.py (teacher solutions)")
    parser.add_argument("--timeout", type=float, default=600.0)
    # Overrides, for a smoke run at tiny scale (tiny models, tiny files):
    parser.add_argument("--student", help="the round 0 student spec (skips building and training the prior)")
    parser.add_argument("--prior-data", type=Path, help="with --student: its prior data")
    parser.add_argument("--solver", help="the solver spec (skips the teacher server)")
    parser.add_argument("--screen-solver", help="the screening solver spec")
    parser.add_argument("--data", type=Path, default=DATA / "train.jsonl")
    parser.add_argument("--eval-data", type=Path, default=DATA / "test.jsonl")
    parser.add_argument("--slice", default=str(SLICE), help="slice file of --eval-data, or 'none'")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where improve.{md,json,png} go")
    parser.add_argument("--report-name", default="improve",
                        help="the report's files: <results>/<name>.{md,json,png} and <name>/round_<r>.jsonl")
    parser.add_argument("--table-only", action="store_true", help="write the report from the rounds so far")
    args = parser.parse_args()
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.table_only:
        run(args)
    print(write_report(args.work, args.results, args.report_name))


if __name__ == "__main__":
    main()
