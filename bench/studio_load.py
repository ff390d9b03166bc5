"""How long LangGraph Studio waits for the graph: import plus the ``make_graph`` factory.

Each sample is a fresh Python process (as the server's first load is) that imports
``langgraph.json``'s module and awaits ``make_graph({})``, the way ``langgraph dev``
loads it; models load on the first run, not here. Writes the median and every sample
to ``bench/results/studio_load.json``.

    python bench/studio_load.py [--samples 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "studio_load.json"
PROBE = """
import asyncio, json, time
t0 = time.perf_counter()
from divconq.graph.studio import make_graph
imported = time.perf_counter()
graph = asyncio.run(make_graph({}))
built = time.perf_counter()
assert graph.get_context_jsonschema()["properties"]
print(json.dumps({"import_s": imported - t0, "factory_s": built - imported, "total_s": built - t0}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5)
    args = parser.parse_args()
    samples = []
    for _ in range(args.samples):
        out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
        samples.append(json.loads(out.stdout.strip().splitlines()[-1]))
    result = {key: statistics.median(s[key] for s in samples) for key in ("import_s", "factory_s", "total_s")}
    result |= {"samples": samples, "python": sys.version.split()[0]}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(RESULTS)
    print(f"graph load for Studio: median {result['total_s']:.2f} s (import {result['import_s']:.2f} s, "
          f"factory {result['factory_s']:.3f} s) over {args.samples} fresh processes -> {RESULTS}")


if __name__ == "__main__":
    main()
