"""The paper-comparison plumbing: prompt sets, the lenient scorer, fixed slices, paired CIs,
the gold (oracle) decomposer, and results files that refuse another run's rows."""

from __future__ import annotations

import json

import pytest

from divconq.cli import main
from divconq.distill.datasets import question_id
from divconq.distill.metrics import gsm8k_em, gsm8k_lenient
from divconq.distill.slices import Slice, check_disjoint, held_out, read_slice, select
from divconq.distill.stats import decomposed_share, paired_bootstrap, paired_rows
from divconq.errors import DivconqError
from divconq.nodes.prompts import (
    PromptSet,
    decompose_messages,
    direct_messages,
    get_prompts,
    load_prompt_set,
    solve_messages,
)

SOCRATIC = "../shared/data/gsm8k/test_socratic.jsonl"


# --------------------------------------------------------------------------- prompts


def test_paper_prompts_ask_for_a_direct_answer_and_keep_our_other_templates():
    ours, paper = get_prompts("math"), get_prompts("math", style="paper")
    assert paper.name == "paper" and ours.name == "divconq"
    direct = direct_messages(paper, "How many?")[0].content
    assert "at most five words" in direct and "step by step" not in direct
    assert "step by step" in direct_messages(ours, "How many?")[0].content
    assert "avoiding any that could be harmful" in decompose_messages(paper, "Q?")[0].content
    assert paper.next_system == ours.next_system  # dynamic mode has no paper wording: ours stays


def test_joint_solver_is_told_to_answer_the_original_question_last():
    question = "How many clips did Natalia sell altogether in April and May?"
    user = solve_messages(get_prompts("math"), question, None, ["How many clips in May?"])[1].content
    # The sub-questions may stop short of the question: the turn ends with the question itself.
    assert user.rstrip().splitlines()[-2].endswith(question)
    assert user.index("1. How many clips in May?") < user.rindex(question)


def test_prompt_set_file_missing_a_field_is_one_line(tmp_path):
    fields = {k: v for k, v in get_prompts("math").__dict__.items() if k not in ("example", "version", "name")}
    complete = tmp_path / "mine.json"
    complete.write_text(json.dumps(fields))
    assert load_prompt_set(complete).name == "mine"
    del fields["solve_user"]
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(fields))
    with pytest.raises(DivconqError, match="lacks field.*solve_user"):
        load_prompt_set(broken)


def test_cli_refuses_a_prompt_file_with_a_missing_field(tmp_path, capsys):
    broken = tmp_path / "p.json"
    broken.write_text(json.dumps({"decompose_system": "x"}))
    code = main(["eval", "--dataset", "gsm8k", "--data", "../shared/data/gsm8k/test.jsonl", "--out",
                 str(tmp_path / "r.jsonl"), "--prompts", str(broken)])
    err = capsys.readouterr().err
    assert code == 2 and "lacks field" in err and "Traceback" not in err
    assert not (tmp_path / "r.jsonl").exists()


def test_unknown_prompt_style_names_the_choices():
    with pytest.raises(ValueError, match="divconq, paper"):
        get_prompts("math", style="fancy")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- scoring


@pytest.mark.parametrize(
    "response, gold, strict, lenient",
    [
        ("She sold 48 + 24 = 72 clips.\nThe answer is: 72", "72", 1.0, 1.0),
        # The paper counts any number on the last line; we take the final one only.
        ("The answer is: 72 clips, from 48 and 24", "72", 0.0, 1.0),
        ("72 is what I get\nThe answer is: 70", "72", 0.0, 0.0),  # only the last line counts
        ("The answer is: $1,200.00", "1200", 1.0, 1.0),
    ],
)
def test_lenient_scorer_reads_any_number_of_the_last_line(response, gold, strict, lenient):
    assert gsm8k_em(response, gold) == strict
    assert gsm8k_lenient(response, gold) == lenient


# --------------------------------------------------------------------------- slices and stats


def test_slice_selects_in_order_and_refuses_overlap_and_unknown_ids(tmp_path):
    path = tmp_path / "heldout.txt"
    path.write_text("# a comment\nb\na\n")
    slice_ = read_slice(path)
    assert slice_.ids == ("b", "a") and slice_.key.startswith("heldout@")

    class E:
        def __init__(self, id):
            self.id = id

    assert [e.id for e in select([E("a"), E("b"), E("c")], slice_)] == ["b", "a"]
    with pytest.raises(DivconqError, match="not in the dataset"):
        select([E("a")], slice_)
    with pytest.raises(DivconqError, match="overlaps the training ids of adapter X"):
        check_disjoint(slice_, {"a"}, "adapter X")
    with pytest.raises(DivconqError, match=r"\(1 ids, e.g. a\)"):  # any Iterable, as the signature says: a one-pass iterator too
        check_disjoint(slice_, iter(["c", "a"]), "adapter X")
    assert held_out([E("a"), E("b"), E("c")], {"b"}, 2) == ["a", "c"]


def test_committed_heldout_slice_keeps_the_old_first_100_and_no_training_id():
    from divconq.distill.datasets import load_dataset
    from divconq.nodes.models import DEFAULT_ADAPTER_DIR

    slice_ = read_slice("bench/results/gsm8k_heldout.txt")
    training = set((DEFAULT_ADAPTER_DIR / "training_ids.txt").read_text().split())
    examples = load_dataset("gsm8k", "../shared/data/gsm8k/test.jsonl")
    old_first_100 = [e.id for e in examples if e.id not in training][:100]  # how earlier rows chose theirs
    assert len(slice_.ids) == 300 and list(slice_.ids[:100]) == old_first_100
    assert not set(slice_.ids) & training


def test_paired_bootstrap_brackets_the_difference_and_counts_discordant_questions():
    run = [1.0] * 30 + [0.0] * 70
    baseline = [1.0] * 20 + [0.0] * 80
    result = paired_bootstrap(run, baseline, resamples=2000)
    assert result.difference == pytest.approx(10.0)
    assert result.ci_low < 10.0 < result.ci_high and result.ci_low > 0  # 10 wins, 0 losses: clearly better
    assert (result.only_run, result.only_baseline) == (10, 0)
    same = paired_bootstrap(run, run, resamples=500)
    assert same.ci_low == same.ci_high == 0.0
    with pytest.raises(ValueError, match="equal"):
        paired_bootstrap([1.0], [1.0, 0.0])


def test_paired_rows_match_questions_by_id_and_share_counts_decompositions():
    run = [{"id": "b", "score": 1.0, "subquestions": ["x?"]}, {"id": "a", "score": 0.0, "subquestions": []}]
    baseline = [{"id": "a", "score": 1.0}, {"id": "b", "score": 1.0}, {"id": "c", "score": 0.0}]
    assert paired_rows(run, baseline) == ([0.0, 1.0], [1.0, 1.0])
    assert decomposed_share(run) == 0.5


# --------------------------------------------------------------------------- the oracle decomposer


def test_gold_decomposer_returns_the_socratic_sub_questions():
    from divconq.nodes.models import load_chat_model

    model = load_chat_model(f"gold:gsm8k:{SOCRATIC}")
    question = "A robe takes 2 bolts of blue fiber and half that much white fiber.  How many bolts in total does it take?"
    reply = model.invoke(decompose_messages(get_prompts("math"), question))
    assert reply.content == "1. How many bolts of white fiber does it take?\n2. How many bolts in total does it take?"
    assert reply.usage_metadata["output_tokens"] == 0
    with pytest.raises(DivconqError, match="no gold sub-questions"):
        model.invoke(decompose_messages(get_prompts("math"), "What is the capital of France?"))
    with pytest.raises(DivconqError, match="gold:<dataset>:<file>"):
        load_chat_model("gold:gsm8k")


# --------------------------------------------------------------------------- eval on a slice


def _eval_args(tiny_model_dir, data, out, *extra):
    spec = f"hf:{tiny_model_dir}"
    return ["eval", "--dataset", "jsonl", "--data", str(data), "--out", str(out), "--decomposer", spec,
            "--solver", spec, "--max-new-tokens", "4", "--concurrency", "1", "--json", *extra]


def test_eval_on_a_slice_records_it_and_refuses_another_slice_or_prompt_set(tiny_model_dir, tmp_path, capsys):
    questions = [f"What is {i} plus {i}?" for i in range(4)]
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": str(2 * i)}) + "\n" for i, q in enumerate(questions)))
    ids = [question_id("jsonl", q) for q in questions]
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    first.write_text(f"{ids[2]}\n{ids[0]}\n")
    second.write_text(f"{ids[1]}\n")
    none = tmp_path / "none.txt"
    none.write_text("")
    out = tmp_path / "r.jsonl"
    assert main(_eval_args(tiny_model_dir, data, out, "--slice", str(first), "--exclude-ids", str(none))) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted([ids[2], ids[0]])
    assert {r["slice"] for r in rows} == {Slice("first", (ids[2], ids[0])).key}
    assert {(r["prompts"], r["prompt_version"]) for r in rows} == {("divconq", get_prompts().version)}
    assert {(r["decomposer_engine"], r["solver_engine"]) for r in rows} == {("transformers", "transformers")}
    capsys.readouterr()
    before = out.read_text()
    for extra in (["--slice", str(second)], ["--slice", str(first), "--prompts", "paper"],
                  ["--slice", str(first), "--engine", "llamacpp"]):  # refused before llama.cpp is even looked for
        assert main(_eval_args(tiny_model_dir, data, out, *extra, "--exclude-ids", str(none))) == 2
        assert "pass another --out file" in capsys.readouterr().err
    assert out.read_text() == before  # nothing finished is lost or changed
    overlap = tmp_path / "trained.txt"
    overlap.write_text(ids[0] + "\n")
    assert main(_eval_args(tiny_model_dir, data, tmp_path / "new.jsonl", "--slice", str(first), "--exclude-ids", str(overlap))) == 2
    assert "overlaps the training ids" in capsys.readouterr().err
