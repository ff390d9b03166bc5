"""No planted secret lands in any file divconq writes.

Thirty credential formats are planted in questions, contexts, gold answers, example ids,
run metadata, model specs and model replies; then a collection (trace store), SFT data
of both variants, an evaluation (results file), a report (Markdown) and a LangSmith import
are written, and every byte of every file under the directory is searched for them.
"""


import pytest
from fakes import ScriptedChatModel
from langgraph.types import RetryPolicy

from divconq.distill.datasets import Example
from divconq.distill.evaluate import evaluate, report
from divconq.distill.runner import RunSettings, run_examples
from divconq.distill.sft import sft_from_store
from divconq.distill import TraceRecorder, TraceStore, import_langsmith_runs
from divconq.graph import build_graph
from divconq.scrub import REDACTED, SECRET_FORMATS, scrub_metadata, scrub_text

PEM_BODY = "MIIEowIBAAKCAQEA7bqXk2Lc9vQwhatever0123456789abcdefABCDEF"
# (format, how it is written, the part that must never be kept)
PLANTED = [
    ("OpenAI key", "sk-proj-Zx81QpLm0987abcdEFGHijkl", "Zx81QpLm0987abcdEFGHijkl"),
    ("Anthropic key", "sk-ant-api03-AbCdEf0123456789GhIjKlMn", "AbCdEf0123456789GhIjKlMn"),
    ("Stripe key", "sk_live_51HqLyjWDarjtT1zdp7dc", "51HqLyjWDarjtT1zdp7dc"),
    ("Stripe webhook secret", "whsec_AbCdEf0123456789GhIjKl", "whsec_AbCdEf0123456789GhIjKl"),
    ("AWS access key id", "AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
    ("AWS secret key", "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
     "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    ("bare AWS secret key", "the key Je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY works", "Je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY"),
    ("credentials in a URL", "https://admin:s3cr3tpw@db.example.com/x", "s3cr3tpw"),
    ("database URL", "postgres://user:pgpassphrase@host/db", "pgpassphrase"),
    ("JWT", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
     "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"),
    ("PEM private key", f"-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\n-----END RSA PRIVATE KEY-----", PEM_BODY),
    ("password without a digit", "password=correcthorsebattery", "correcthorsebattery"),
    ("token assignment", "token=abc123def456ghi", "abc123def456ghi"),
    ("Ocp-Apim-Subscription-Key header", "Ocp-Apim-Subscription-Key: 4f1e8ad9c2b7436b9e0d5a6c7f8e9d0a",
     "4f1e8ad9c2b7436b9e0d5a6c7f8e9d0a"),
    ("x-api-key header", "x-api-key: my-anthropic-console-key", "my-anthropic-console-key"),
    ("GitHub token", "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", "aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789"),
    ("GitLab token", "glpat-AbCdEfGhIjKlMnOpQrSt12", "AbCdEfGhIjKlMnOpQrSt12"),
    ("Slack token", "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "AbCdEfGhIjKlMnOpQrStUvWx"),
    ("Slack webhook", "https://hooks.slack.com/services/T0AAAA0AA/B0BBBB0BB/abcdefghijklmnopqrstuvwx",
     "abcdefghijklmnopqrstuvwx"),
    ("Google API key", "AIzaSyA-1234567890abcdefghijklmnopqrstu", "SyA-1234567890abcdefghijklmnopqrstu"),
    ("Google OAuth token", "ya29.a0AfH6SMBx1234567890abcdefghij", "a0AfH6SMBx1234567890abcdefghij"),
    ("Bearer header", "Authorization: Bearer abcDEF123456ghiJKL", "abcDEF123456ghiJKL"),
    ("Basic header", "Authorization: Basic dXNlcjpwYXNzd29yZDEyMw==", "dXNlcjpwYXNzd29yZDEyMw"),
    ("Hugging Face token", "hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345", "AbCdEfGhIjKlMnOpQrStUvWxYz012345"),
    ("LangSmith key", "lsv2_pt_0123456789abcdef0123456789abcdef_0123456789", "0123456789abcdef0123456789abcdef_0123456789"),
    ("Azure storage account key", "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==",
     "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq"),
    ("Azure SAS signature", "https://a.blob.core.windows.net/c/b?sv=2022-11-02&sr=b&sig=Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA%3D%3D",
     "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA"),
    ("npm token", "npm_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789", "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"),
    ("SendGrid key", "SG.AbCdEfGhIjKlMnOp12.QrStUvWxYz0123456789ab", "QrStUvWxYz0123456789ab"),
    ("Telegram bot token", "123456789:AAEhBP0av28abcdefghijklmnopqrstuvwx", "AAEhBP0av28abcdefghijklmnopqrstuvwx"),
    ("Databricks token", "dapi0123456789abcdef0123456789abcdef", "dapi0123456789abcdef0123456789abcdef"),
    ("Twilio key", "SK0123456789abcdef0123456789abcdef", "SK0123456789abcdef0123456789abcdef"),
]
SECRETS = [secret for _, _, secret in PLANTED]


def test_at_least_twenty_formats_are_planted_and_named():
    assert len({name for name, _, _ in PLANTED}) >= 30 and len(SECRET_FORMATS) >= 30


@pytest.mark.parametrize("name, text, secret", PLANTED, ids=[name for name, _, _ in PLANTED])
def test_each_format_is_redacted(name, text, secret):
    scrubbed = scrub_text(f"Please use {text} now.")
    assert secret not in scrubbed and REDACTED in scrubbed
    assert scrub_text(scrubbed) == scrubbed  # scrubbing twice changes nothing more


@pytest.mark.parametrize("text", [
    "scikit-learn and sk-learn are python libraries",
    "The secret: Alice hid 3 coins. 1 token = 4 quarters; max_tokens: 256, input_tokens=12",
    "sha1 da39a3ee5e6b4b0d3255bfef95601890afd80709 and https://example.com/a:b",
    "Natalia sold 48 clips in April and half as many in May. Key: 72",
])
def test_ordinary_text_is_kept(text):
    assert scrub_text(text) == text


def test_metadata_values_and_keys(tmp_path):
    assert scrub_metadata({"db": "postgres://user:pgpassphrase@host/db", "client_secret": "x", "n": 3}) == {
        "db": f"postgres://{REDACTED}@host/db", "n": 3}


def _questions() -> list[Example]:
    examples = []
    for i, (name, text, _) in enumerate(PLANTED):
        one_line = " ".join(text.split())
        examples.append(Example(
            id=f"q{i}-{one_line}",  # an id that quotes a secret (one derived from a URL, say)
            question=f"Using {text}, how many clips did Natalia sell in {i} months?",
            context=f"Config: {text}",
            answers=(f"{i} ({one_line})",),
        ))
    return examples


def _graph():
    def decompose(messages):
        quoted = messages[-1].content.split("Using ", 1)[-1][:300].replace("\n", " ")
        return f"1. What does {quoted} mean?\n2. How many clips in total?"

    def solve(messages):
        return f"1. It means {messages[-1].content[:400]}\n2. 72\n\nThe answer is: 72"

    decomposer = ScriptedChatModel(respond=decompose)
    solver = ScriptedChatModel(respond=solve)
    return build_graph(decomposer, solver, retry=RetryPolicy(max_attempts=1)).compile()


QUICK = RunSettings(concurrency=2, retries=0, backoff_seconds=0.0, progress=False)


def _langsmith_export(path, graph, examples):
    """Real graph runs traced the way LangSmith records them, saved one JSON line each,
    with secrets in the questions, the replies and the run metadata."""
    from langchain_core.tracers.run_collector import RunCollectorCallbackHandler
    from test_traces import _langsmith_lines

    lines = []
    for i, example in enumerate(examples[:5]):
        collector = RunCollectorCallbackHandler(_schema_format="original+chat")
        metadata = {"example_id": example.id, "dataset": "langsmith", "api_key": PLANTED[1][1],
                    "endpoint": "https://admin:s3cr3tpw@db.example.com", "gold": list(example.answers)}
        graph.invoke({"question": example.question}, config={"callbacks": [collector], "metadata": metadata})
        lines += _langsmith_lines(collector.traced_runs[0])
    path.write_text("\n".join(lines) + "\n")


def test_no_planted_secret_in_any_written_file(tmp_path):
    examples = _questions()
    graph = _graph()
    store_path = tmp_path / "traces.db"
    with TraceStore(store_path) as store:
        recorder = TraceRecorder(store)

        def config_for(example):
            metadata = {"gold": list(example.answers), "example_id": example.id, "dataset": "jsonl",
                        "endpoint": "postgres://user:pgpassphrase@host/db", "note": PLANTED[3][1]}
            return {"callbacks": [recorder], "metadata": metadata}

        stats = run_examples(graph, examples, lambda outcome: None, config_for=config_for, settings=QUICK)
        assert stats.finished == len(examples)
        # A resumed collection finds every question done, although the ids were scrubbed.
        done = store.done_example_ids("jsonl")
        assert all(scrub_text(e.id) in done for e in examples)
        assert all(store.has_example("jsonl", e.id) for e in examples)
        _langsmith_export(tmp_path / "langsmith.jsonl", graph, examples)
        assert import_langsmith_runs(tmp_path / "langsmith.jsonl", store) == 5
    sft_from_store(store_path, variant="decomposer", out_dir=tmp_path / "sft_d", val_fraction=0.2)
    sft_from_store(store_path, variant="solver", out_dir=tmp_path / "sft_s", val_fraction=0.2)
    results = tmp_path / "results.jsonl"
    info = {"dataset": "jsonl", "decomposer": "openai:teacher@https://admin:s3cr3tpw@db.example.com/v1",
            "solver": f"openai:teacher@http://h/v1?{PLANTED[0][1]}", "mode": "static"}
    rows = evaluate(graph, examples, dataset="jsonl", out=results, run_info=info, settings=QUICK)
    assert len(rows) == len(examples)
    again = evaluate(graph, examples, dataset="jsonl", out=results, run_info=info, settings=QUICK)
    assert len(again) == len(examples)  # the rerun skipped every (scrubbed) id: nothing duplicated
    report([results], markdown_out=tmp_path / "table.md")

    written = sorted(p for p in tmp_path.rglob("*") if p.is_file() and p.name != "langsmith.jsonl")
    names = {p.name for p in written}
    assert {"traces.db", "results.jsonl", "table.md", "train.jsonl", "summary.json"} <= names
    raw = {p: p.read_bytes() for p in written}
    kept = [(p.name, name) for p, data in raw.items() for name, _, secret in PLANTED if secret.encode() in data]
    assert kept == []
    # The scrubbed texts are still there: the runs are kept, only the credentials go.
    assert any(REDACTED.encode() in data for data in raw.values())
    assert b"How many clips in total?" in raw[tmp_path / "sft_d" / "train.jsonl"] + raw.get(
        tmp_path / "sft_d" / "validation.jsonl", b"")
