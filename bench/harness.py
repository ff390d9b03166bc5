"""Questions per second of the evaluation harness against a server that answers instantly.

The model time is zero, so what is measured is everything else: the real
``divconq.distill.evaluate.evaluate`` (resume scan, runner, one JSON line per question in
a real results file), the real graph (static route, joint solve) and the real ChatOpenAI
client talking HTTP to ``bench/instant_server.py`` in a subprocess. ``--processes 1``
runs the questions in threads of this process (one graph); ``--processes N`` in N worker
processes (``RunSettings.processes``), each building its own graph from a factory, and
their start-up is inside the timing. Each level runs ``--repeats`` times on a fresh
results file; the table gives the median, min and max questions per second, the
client's CPU milliseconds per question (this process and its workers), the server's,
the cores other processes of the machine used meanwhile ("others") and the hypervisor
took ("steal"), both from /proc/stat, and the load average; on a shared machine read
q/s next to those.

    python bench/harness.py [--questions 1000] [--concurrency 1 4 16 64] [--processes 1 2] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from instant_server import start_server  # noqa: E402

from divconq.distill.datasets import Example, load_dataset  # noqa: E402
from divconq.distill.evaluate import evaluate  # noqa: E402
from divconq.distill.runner import RunSettings  # noqa: E402
from divconq.graph import build_graph  # noqa: E402
from divconq.nodes.models import load_chat_model  # noqa: E402

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"


def questions(n: int, path: Path = GSM8K) -> tuple[list[Example], str]:
    """``n`` GSM8K test questions (cycled with a suffix if ``n`` exceeds the file), or synthetic ones."""
    if path.is_file():
        base, source = load_dataset("gsm8k", path), f"gsm8k {path}"
    else:
        base = [Example(f"syn-{i}", f"Natalia sold {i} clips in April and half as many in May. How many in all?",
                        None, (str(i + i // 2),)) for i in range(n)]
        source = "synthetic"
    out = []
    for i in range(n):
        e = base[i % len(base)]
        lap = i // len(base)
        out.append(e if lap == 0 else dataclasses.replace(e, id=f"{e.id}-{lap}", question=f"{e.question} ({lap})"))
    return out, source


def static_graph(base_url: str) -> Any:
    """The paper's static route (joint solve), both roles on the instant server via ChatOpenAI."""
    return build_graph(load_chat_model(f"openai:instant@{base_url}", role="decomposer"),
                       load_chat_model(f"openai:instant@{base_url}", role="solver"),
                       mode="static", solve="joint").compile()


def _proc_cpu(pid: int, children: bool = False) -> float:
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12]) + ((int(fields[13]) + int(fields[14])) if children else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_seconds() -> tuple[float, float]:
    """(CPU seconds used by all processes of this machine, seconds stolen by the hypervisor), from /proc/stat."""
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in open("/proc/stat").readline().split()[1:9])
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def client_cpu_seconds() -> float:
    """CPU seconds of this process, its reaped children and the workers of the fork server
    (they are its children: it reaps them and their time lands in its own counters)."""
    import multiprocessing.forkserver as fs

    t = os.times()
    own = t.user + t.system + t.children_user + t.children_system
    forkserver = getattr(fs._forkserver, "_forkserver_pid", None)  # noqa: SLF001 - bench only
    return own + (_proc_cpu(forkserver, children=True) if forkserver else 0.0)


def run_once(graph: Any, examples: list[Example], settings: RunSettings, server: Any) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "results.jsonl"
        cpu0, server0, (busy0, steal0) = client_cpu_seconds(), server.cpu_seconds(), machine_seconds()
        started = time.perf_counter()
        rows = evaluate(graph, examples, dataset="gsm8k", out=out,
                        run_info={"dataset": "gsm8k", "decomposer": "instant", "solver": "instant", "mode": "static"},
                        settings=settings)
        seconds = time.perf_counter() - started
        cpu1, server1, (busy1, steal1) = client_cpu_seconds(), server.cpu_seconds(), machine_seconds()
        lines = out.read_text().count("\n")
    # Honesty checks: every question went the static route through both models and is on file.
    if len(rows) != len(examples) or lines != len(examples) or len({r["id"] for r in rows}) != len(examples):
        raise SystemExit(f"results file holds {lines} lines / {len(rows)} rows for {len(examples)} questions")
    bad = [r for r in rows if r["error"] or r["route"] != "static" or r["prediction"] != "72"
           or r["usage"]["decomposer"]["calls"] != 1 or r["usage"]["solver"]["calls"] != 1]
    if bad:
        raise SystemExit(f"{len(bad)} rows did not take the static route cleanly, e.g. {bad[0]}")
    client_cpu = cpu1 - cpu0
    n = len(examples)
    others = max(0.0, (busy1 - busy0) - client_cpu - (server1 - server0))
    return {"seconds": seconds, "qps": n / seconds, "client_cpu_ms_per_q": 1000 * client_cpu / n,
            "server_cpu_ms_per_q": 1000 * (server1 - server0) / n, "others_cores": others / seconds,
            "steal_cores": (steal1 - steal0) / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2],
                        help="RunSettings.processes values to try (1: threads in this process)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--progress", action="store_true", help="show the progress bar, as `divconq eval` does")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    examples, source = questions(args.questions)
    rows = []
    with start_server() as server:
        graph = static_graph(server.base_url)
        factory = functools.partial(static_graph, server.base_url)
        for processes in args.processes:
            # One graph here for threads; worker processes each build their own from the factory.
            target = graph if processes == 1 else factory
            run_once(target, examples[:100], RunSettings(concurrency=8, processes=processes, progress=False),
                     server)  # warm up (and start the fork server once)
            for concurrency in args.concurrency:
                settings = RunSettings(concurrency=concurrency, processes=processes, progress=args.progress)
                runs = [run_once(target, examples, settings, server) for _ in range(args.repeats)]
                qps = [r["qps"] for r in runs]
                rows.append({
                    "processes": processes, "concurrency": concurrency,
                    "qps_median": statistics.median(qps), "qps_min": min(qps), "qps_max": max(qps),
                    "client_cpu_ms_per_q": statistics.median(r["client_cpu_ms_per_q"] for r in runs),
                    "server_cpu_ms_per_q": statistics.median(r["server_cpu_ms_per_q"] for r in runs),
                    "others_cores": statistics.median(r["others_cores"] for r in runs),
                    "steal_cores": statistics.median(r["steal_cores"] for r in runs),
                    "runs_qps": [round(q, 1) for q in qps],
                    "load_average": os.getloadavg()[0],
                })
                if not args.json:
                    print_row(rows[-1], header=len(rows) == 1, examples=len(examples), source=source,
                              repeats=args.repeats)
    if args.json:
        print(json.dumps({"questions": len(examples), "source": source, "repeats": args.repeats,
                          "cores": os.cpu_count(), "rows": rows}, indent=2))


def print_row(r: dict[str, Any], *, header: bool, examples: int, source: str, repeats: int) -> None:
    if header:
        print(f"{examples} questions ({source}), {repeats} runs per level, {os.cpu_count()} cores; "
              "client CPU counts this process and its worker processes")
        print(f"{'processes':>9}{'concurrency':>12}{'q/s median':>12}{'min':>7}{'max':>7}"
              f"{'client ms/q':>13}{'server ms/q':>13}{'others':>8}{'steal':>7}{'load 1m':>9}")
    print(f"{r['processes']:>9}{r['concurrency']:>12}{r['qps_median']:>12.0f}{r['qps_min']:>7.0f}{r['qps_max']:>7.0f}"
          f"{r['client_cpu_ms_per_q']:>13.2f}{r['server_cpu_ms_per_q']:>13.2f}{r['others_cores']:>8.2f}{r['steal_cores']:>7.2f}"
          f"{r['load_average']:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
