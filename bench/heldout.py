"""Write the fixed held-out GSM8K slice every paper_cpu row runs on.

The first --size GSM8K test questions, in file order, that are in no training id list (the
shipped adapter's, and any others given). The first 100 are the questions every earlier
100-question row ran on (those runs excluded the shipped adapter's ids, then took the first
100), so old and new rows stay comparable. Written to a temporary name and moved into place.

    python bench/heldout.py [--size 300] [--training-ids FILE ...] [--out bench/results/gsm8k_heldout.txt]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from divconq.distill.datasets import load_dataset
from divconq.distill.slices import held_out
from divconq.nodes.models import DEFAULT_ADAPTER_DIR
from divconq.safeio import atomic_write

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "gsm8k_heldout.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl")
    parser.add_argument("--size", type=int, default=300)
    parser.add_argument("--training-ids", type=Path, action="append", default=[DEFAULT_ADAPTER_DIR / "training_ids.txt"],
                        help="id lists to keep out (default: the shipped adapter's)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    training = {line.strip() for path in args.training_ids for line in path.read_text().splitlines() if line.strip()}
    ids = held_out(load_dataset("gsm8k", args.data), training, args.size)
    header = (f"# GSM8K test ({args.data.name}): the first {args.size} questions in no training id list "
              f"({', '.join(p.name for p in args.training_ids)}); written by bench/heldout.py\n")
    atomic_write(args.out, header + "\n".join(ids) + "\n", what="slice file")
    print(f"wrote {len(ids)} ids to {args.out}")


if __name__ == "__main__":
    main()
