"""Dataset loaders on the real public files (../shared/data) and on malformed files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from divconq.distill.datasets import (
    DATASETS,
    DatasetFormatError,
    Example,
    load_dataset,
    question_id,
)
from divconq.distill.metrics import DROP_SPAN_SEP

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def data_file(relative: str) -> Path:
    """The real file, or skip: the data lives outside the repository and is never copied in."""
    path = DATA / relative
    if not path.is_file():
        pytest.skip(f"real dataset file {path} is absent (see shared/data/README.md for sources)")
    return path


# --------------------------------------------------------------------------- real files: counts

COUNTS = [
    ("gsm8k", "gsm8k/train.jsonl", 7473),
    ("gsm8k", "gsm8k/test.jsonl", 1319),
    ("gsm8k", "gsm8k/test_socratic.jsonl", 1319),
    ("strategyqa", "strategyqa/train.json", 2061),
    ("strategyqa", "strategyqa/dev.json", 229),
    ("drop", "drop_decomp/drop_dataset_train_300_annotations.json", 299),
    ("bamboogle", "bamboogle/bamboogle.json", 125),
    ("break", "break/qdmr_high_level_dev.csv", 3130),
    ("hotpotqa", "hotpotqa/hotpot_dev_v1_simplified.json", 7405),
]


@pytest.mark.parametrize(("name", "relative", "count"), COUNTS, ids=[c[1] for c in COUNTS])
def test_real_file_record_counts_and_unique_ids(name: str, relative: str, count: int) -> None:
    examples = load_dataset(name, data_file(relative))
    assert len(examples) == count
    assert len({e.id for e in examples}) == count
    assert all(isinstance(e, Example) and e.question.strip() for e in examples)
    if name != "break":
        assert all(e.answers and all(a.strip() for a in e.answers) for e in examples)


# --------------------------------------------------------------------------- real files: pinned examples


def test_gsm8k_train_first_example() -> None:
    first = load_dataset("gsm8k", data_file("gsm8k/train.jsonl"))[0]
    assert first.question.startswith("Natalia sold clips to 48 of her friends in April")
    assert first.answers == ("72",)
    assert first.context is None
    assert first.gold_subquestions == ()
    assert first.id == question_id("gsm8k", first.question)


def test_gsm8k_gold_commas_are_removed() -> None:
    answers = {a for e in load_dataset("gsm8k", data_file("gsm8k/train.jsonl")) for a in e.answers}
    assert "1080" in answers  # '#### 1,080' in the file
    assert not any("," in a for a in answers)


def test_gsm8k_socratic_subquestions_and_ids_match_plain_test() -> None:
    plain = load_dataset("gsm8k", data_file("gsm8k/test.jsonl"))
    socratic = load_dataset("gsm8k", data_file("gsm8k/test_socratic.jsonl"))
    assert [e.id for e in plain] == [e.id for e in socratic]
    assert [e.answers for e in plain] == [e.answers for e in socratic]
    assert all(e.gold_subquestions == () for e in plain)
    assert all(e.gold_subquestions for e in socratic)
    assert socratic[0].answers == ("18",)
    assert socratic[0].gold_subquestions == (
        "How many eggs does Janet sell?",
        "How much does Janet make at the farmers' market?",
    )
    assert socratic[5].answers == ("64",)
    assert len(socratic[5].gold_subquestions) == 5
    assert socratic[5].gold_subquestions[0] == "How much does one glass cost?"


def test_gsm8k_train_and_test_ids_are_disjoint() -> None:
    train = {e.id for e in load_dataset("gsm8k", data_file("gsm8k/train.jsonl"))}
    test = {e.id for e in load_dataset("gsm8k", data_file("gsm8k/test.jsonl"))}
    assert not train & test


def test_question_id_is_content_based_and_normalised() -> None:
    assert question_id("gsm8k", "How  many apples?\n") == question_id("gsm8k", "how many apples?")
    assert question_id("gsm8k", "How many apples?") != question_id("gsm8k", "How many pears?")
    assert question_id("gsm8k", "x").startswith("gsm8k-") and len(question_id("gsm8k", "x")) == 18


def test_strategyqa_dev_first_example_and_yes_no_answers() -> None:
    examples = load_dataset("strategyqa", data_file("strategyqa/dev.json"))
    first = examples[0]
    assert first.id == "e0044a7b4d146d611e73"
    assert first.question.startswith("Will the Albany in Georgia reach a hundred thousand")
    assert first.answers == ("no",)
    assert first.gold_subquestions[0] == "What is the population of Albany, Georgia?"
    assert len(first.gold_subquestions) == 5
    assert sum(e.answers == ("yes",) for e in examples) == 107
    assert sum(e.answers == ("no",) for e in examples) == 122


def test_strategyqa_train_first_example() -> None:
    first = load_dataset("strategyqa", data_file("strategyqa/train.json"))[0]
    assert first.id == "2bc9c4f9c19c167187f2"
    assert first.answers == ("yes",)
    assert first.gold_subquestions == (
        "How many kids did Julius Caesar have?",
        "How many kids did Genghis Khan have?",
        "Is #2 greater than #1?",
    )


def test_drop_decomp_examples() -> None:
    examples = load_dataset("drop", data_file("drop_decomp/drop_dataset_train_300_annotations.json"))
    by_id = {e.id: e for e in examples}
    first = examples[0]
    assert first.id == "e4484b02-b56e-460b-a4a2-a0d56422c658"
    assert first.answers == ("transit",)
    assert first.context is not None and first.context.startswith("In 2009, 78.5% of Dallas (city) commuters")
    assert first.gold_subquestions[0] == "What percent of Dallas commuters were riding transit in 2009?"
    number = by_id["cc8db6ae-5ce6-4cac-8b27-e2c7031a560c"]
    assert number.answers == ("3",)
    assert number.gold_subquestions[-1] == "diff(4; 1)"
    date = by_id["1ee2e2b4-092b-45b3-9c00-05180da755e3"]
    assert date.answers == ("8 September",)
    assert all(e.context and e.gold_subquestions for e in examples)


def test_bamboogle_json_examples() -> None:
    examples = load_dataset("bamboogle", data_file("bamboogle/bamboogle.json"))
    first, second = examples[0], examples[1]
    assert first.question == "Who was president of the United States in the year that Citibank was founded?"
    assert first.answers == ("james madison",)
    assert first.gold_subquestions[0] == "What year was Citibank founded?"
    assert second.answers == ("Titan IIIE",)  # silver A2 alternatives are not gold
    assert second.gold_subquestions == (
        "What was the first spacecraft that ever approached Uranus?",
        "What rocket was Voyager 2 launched on?",
    )
    assert first.id == question_id("bamboogle", first.question)


def test_break_qdmr_steps() -> None:
    examples = load_dataset("break", data_file("break/qdmr_high_level_dev.csv"))
    first = examples[0]
    assert first.id == "CWQ_dev_WebQTest-1011_c0be4f76a5397ba6d0d06f53905e504b"
    assert first.question == "What Tibetan speaking countries have a population of less than 993885000?"
    assert first.answers == ()
    assert first.gold_subquestions == (
        "Tibetan speaking countries",
        "#1 that have a population of less than 993885000",
    )
    assert sum(e.id.startswith("HOTPOT") for e in examples) == 1382
    assert sum(e.id.startswith("DROP") for e in examples) == 1273


def test_hotpotqa_simplified_examples() -> None:
    examples = load_dataset("hotpotqa", data_file("hotpotqa/hotpot_dev_v1_simplified.json"))
    assert examples[0].question == "Were Scott Derrickson and Ed Wood of the same nationality?"
    assert examples[0].answers == ("yes",)
    assert examples[1].answers == ("Chief of Protocol",)
    assert examples[0].context is None
    assert examples[0].id == question_id("hotpotqa", examples[0].question)


# --------------------------------------------------------------------------- small files built here


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_datasets_tuple_lists_every_loader() -> None:
    assert set(DATASETS) == {"gsm8k", "drop", "bamboogle", "strategyqa", "hotpotqa", "break", "jsonl"}


def test_unknown_dataset_name_lists_valid_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="valid names: gsm8k, drop") as info:
        load_dataset("squad", write(tmp_path, "x.jsonl", ""))
    assert "squad" in str(info.value)


def test_missing_file_is_one_clear_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("gsm8k", missing)
    message = str(info.value)
    assert "\n" not in message and str(missing) in message and "not found" in message


def test_jsonl_generic_answers_string_list_context_and_id(tmp_path: Path) -> None:
    lines = [
        {"question": "Q one?", "answer": "A"},
        {"question": "Q two?", "answer": ["B", "b2", "B"], "context": "ctx", "id": "my-2"},
        {"question": "Q three?", "answer": 7, "subquestions": ["s1?", "s2?"]},
    ]
    path = write(tmp_path, "data.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    one, two, three = load_dataset("jsonl", path)
    assert one == Example(question_id("jsonl", "Q one?"), "Q one?", None, ("A",))
    assert two == Example("my-2", "Q two?", "ctx", ("B", "b2"))
    assert three.answers == ("7",) and three.gold_subquestions == ("s1?", "s2?")


def test_jsonl_error_names_line_and_expectation(tmp_path: Path) -> None:
    good = json.dumps({"question": "q", "answer": "a"})
    path = write(tmp_path, "data.jsonl", "\n".join([good] * 6 + ['{"question": "q"}']))
    with pytest.raises(DatasetFormatError) as info:
        load_dataset("jsonl", path)
    message = str(info.value)
    assert message.startswith("data.jsonl line 7: expected a JSON object with 'question' and 'answer', got ")
    assert "\n" not in message


def test_jsonl_invalid_json_names_line(tmp_path: Path) -> None:
    path = write(tmp_path, "data.jsonl", '{"question": "q", "answer": "a"}\n\n{"question": oops}\n')
    with pytest.raises(DatasetFormatError, match=r"^data\.jsonl line 3: invalid JSON"):
        load_dataset("jsonl", path)


def test_jsonl_bad_answer_type(tmp_path: Path) -> None:
    path = write(tmp_path, "d.jsonl", json.dumps({"question": "q", "answer": {"x": 1}}))
    with pytest.raises(DatasetFormatError, match=r"d\.jsonl line 1: expected 'answer' as a non-empty string"):
        load_dataset("jsonl", path)


def test_dataset_format_error_is_a_value_error() -> None:
    assert issubclass(DatasetFormatError, ValueError)


def test_gsm8k_missing_final_marker_names_line(tmp_path: Path) -> None:
    rows = [{"question": "q1", "answer": "x\n#### 3"}, {"question": "q2", "answer": "no marker"}]
    path = write(tmp_path, "train.jsonl", "\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DatasetFormatError, match=r"^train\.jsonl line 2: expected an 'answer' ending with '####"):
        load_dataset("gsm8k", path)


def test_gsm8k_socratic_parsing_on_a_small_file(tmp_path: Path) -> None:
    row = {"question": "Q", "answer": "How many? ** 2 + 2 = <<2+2=4>>4\nAnd then? ** 4 * 2 = 8\n#### 1,008"}
    (example,) = load_dataset("gsm8k", write(tmp_path, "s.jsonl", json.dumps(row)))
    assert example.gold_subquestions == ("How many?", "And then?")
    assert example.answers == ("1008",)


def test_strategyqa_error_names_record(tmp_path: Path) -> None:
    records = [{"qid": "a", "question": "Q?", "answer": True}, {"qid": "b", "question": "Q2?", "answer": "maybe"}]
    path = write(tmp_path, "dev.json", json.dumps(records))
    with pytest.raises(DatasetFormatError, match=r"^dev\.json record 1: expected 'answer' true/false"):
        load_dataset("strategyqa", path)


def test_strategyqa_without_answer_is_allowed_for_the_test_split(tmp_path: Path) -> None:
    path = write(tmp_path, "test.json", json.dumps([{"qid": "t1", "question": "Q?"}]))
    assert load_dataset("strategyqa", path) == [Example("t1", "Q?", None, ())]


def test_json_top_level_must_be_a_list(tmp_path: Path) -> None:
    path = write(tmp_path, "h.json", json.dumps({"question": "q", "answer": "a"}))
    with pytest.raises(DatasetFormatError, match=r"^h\.json top level: expected a JSON list"):
        load_dataset("hotpotqa", path)


def test_invalid_json_file_names_line(tmp_path: Path) -> None:
    path = write(tmp_path, "b.json", '[\n  {"Question": "q", "Answer": "a"},\n  {oops}\n]')
    with pytest.raises(DatasetFormatError, match=r"^b\.json line 3: invalid JSON"):
        load_dataset("bamboogle", path)


def test_bamboogle_csv(tmp_path: Path) -> None:
    path = write(tmp_path, "bamboogle.csv", 'Question,Answer\n"Who, exactly?",Ada Lovelace\n')
    (example,) = load_dataset("bamboogle", path)
    assert example.question == "Who, exactly?" and example.answers == ("Ada Lovelace",)


def test_bamboogle_csv_missing_column_names_header(tmp_path: Path) -> None:
    path = write(tmp_path, "bamboogle.csv", "Question,Reply\nq,a\n")
    with pytest.raises(DatasetFormatError, match=r"^bamboogle\.csv line 1: expected a CSV header with columns"):
        load_dataset("bamboogle", path)


def test_bamboogle_json_record_missing_answer(tmp_path: Path) -> None:
    path = write(tmp_path, "b.json", json.dumps([{"Question": "q", "Answer": "a"}, {"Question": "q2"}]))
    with pytest.raises(DatasetFormatError, match=r"^b\.json record 1: expected a record with non-empty"):
        load_dataset("bamboogle", path)


def test_break_csv_short_row_names_line(tmp_path: Path) -> None:
    text = "question_id,question_text,decomposition\nid1,Q?,return a ;return #1\nid2,only question\n"
    with pytest.raises(DatasetFormatError, match=r"^dev\.csv line 3: expected 3 CSV fields"):
        load_dataset("break", write(tmp_path, "dev.csv", text))


def _drop_file(tmp_path: Path, qa_pairs: list[dict]) -> Path:
    return write(tmp_path, "drop_dev.json", json.dumps({"p1": {"passage": "Text.", "qa_pairs": qa_pairs}}))


def _drop_answer(number: str = "", spans: list[str] | None = None, date: dict | None = None) -> dict:
    return {"number": number, "spans": spans or [], "date": date or {"day": "", "month": "", "year": ""}}


def test_drop_official_layout_with_validated_answers_and_multispan(tmp_path: Path) -> None:
    qa = {
        "question": "Who played?",
        "query_id": "q1",
        "answer": _drop_answer(spans=["Tom", "Jerry"]),
        "validated_answers": [_drop_answer(spans=["Tom", "Jerry"]), _drop_answer(spans=["Jerry"]), _drop_answer()],
    }
    may_1990 = _drop_answer(date={"day": "", "month": "May", "year": "1990"})
    date_qa = {"question": "When?", "query_id": "q2", "answer": may_1990}
    first, second = load_dataset("drop", _drop_file(tmp_path, [qa, date_qa]))
    assert first == Example("q1", "Who played?", "Text.", (DROP_SPAN_SEP.join(["Tom", "Jerry"]), "Jerry"))
    assert second.answers == ("May 1990",) and second.gold_subquestions == ()


def test_drop_empty_answer_names_qa_pair(tmp_path: Path) -> None:
    qa = {"question": "Q?", "query_id": "q1", "answer": _drop_answer()}
    with pytest.raises(DatasetFormatError, match=r"^drop_dev\.json passage 'p1' qa_pairs\[0\]: expected a non-empty"):
        load_dataset("drop", _drop_file(tmp_path, [qa]))


def test_drop_top_level_must_be_an_object(tmp_path: Path) -> None:
    with pytest.raises(DatasetFormatError, match=r"top level: expected a JSON object mapping passage ids"):
        load_dataset("drop", write(tmp_path, "d.json", "[]"))


def test_non_utf8_file_is_a_format_error(tmp_path: Path) -> None:
    path = tmp_path / "latin.jsonl"
    path.write_bytes('{"question": "caf\u00e9", "answer": "x"}'.encode("latin-1"))
    with pytest.raises(DatasetFormatError, match=r"^latin\.jsonl: expected UTF-8"):
        load_dataset("jsonl", path)


def test_examples_are_frozen_and_hashable() -> None:
    example = Example("i", "q", None, ("a",))
    with pytest.raises(AttributeError):
        example.question = "other"  # type: ignore[misc]
    assert hash(example) == hash(Example("i", "q", None, ("a",)))
