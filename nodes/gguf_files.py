"""GGUF files for llama.cpp: checking them before a server loads them, and exporting a
trained student (merged, or as an unmerged LoRA GGUF) with llama.cpp's own converters.

Export merges the adapter with peft and converts the merged model with the
``convert_hf_to_gguf.py`` of the vendored llama.cpp source (``divconq llamacpp build``
unpacks it); ``q4_k_m`` is quantized from an f32 GGUF by ``llama-quantize``. A LoRA GGUF
(``convert_lora_to_gguf.py``) stays unmerged, so llama.cpp applies it at run time to a
base GGUF: ``llamacpp:<base.gguf>+lora=<adapter.gguf>``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from divconq.contract import QUANTS, Quant
from divconq.errors import AdapterMismatchError, DivconqError, ModelSpecError
from divconq.nodes import llamacpp

LORA_QUANTS: tuple[str, ...] = ("f32", "f16", "q8_0")  # what convert_lora_to_gguf.py writes
_QUANTIZED = {"q4_k_m": "Q4_K_M"}  # written by llama-quantize, from an f32 GGUF
_GGUF_HELP = "pass a GGUF language model (e.g. one `divconq export` wrote)"


# --------------------------------------------------------------------------- checking


def _reader(path: Path, what: str) -> Any:
    from gguf import GGUFReader

    if not path.is_file():
        raise ModelSpecError(f"{what} {path} does not exist: {_GGUF_HELP}")
    try:
        return GGUFReader(path)
    except (ValueError, OSError, IndexError, KeyError) as exc:  # a bad magic, a truncated file
        raise ModelSpecError(f"{what} {path} is not a GGUF file ({str(exc)[:80] or type(exc).__name__}): "
                             f"{_GGUF_HELP}") from None


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    return field.contents() if field is not None else None


def check_model_gguf(path: str | Path) -> None:
    """Refuse, in one line, a file llama-server could not serve as a chat model."""
    path = Path(path)
    reader = _reader(path, "model file")
    if _field(reader, "general.type") == "adapter":
        raise ModelSpecError(f"{path} is a LoRA adapter GGUF, not a model: use llamacpp:<base model.gguf>+lora={path}")
    if not _field(reader, "general.architecture") or _field(reader, "tokenizer.ggml.model") is None:
        raise ModelSpecError(f"{path} is a GGUF file but not a language model (no architecture or tokenizer): "
                             f"{_GGUF_HELP}")
    if not _field(reader, "tokenizer.chat_template"):
        raise ModelSpecError(f"{path} has no chat template: export an instruction-tuned model, or set "
                             "tokenizer.chat_template in the model dir before `divconq export`")


def check_lora_gguf(lora: str | Path, model: str | Path | None) -> None:
    """Refuse a LoRA GGUF that is no adapter, or whose tensors do not fit ``model``'s.

    Shapes and architecture are what a GGUF can tell: two bases of one shape are told apart
    only at export, by the adapter manifest's base fingerprint."""
    lora = Path(lora)
    adapter = _reader(lora, "LoRA adapter file")
    if _field(adapter, "general.type") != "adapter" or _field(adapter, "adapter.type") != "lora":
        raise ModelSpecError(f"{lora} is not a LoRA adapter GGUF: write one with divconq export --adapter DIR "
                             "--lora-gguf --gguf OUT.gguf")
    if model is None:
        return
    model = Path(model)
    base = _reader(model, "model file")
    arch, base_arch = _field(adapter, "general.architecture"), _field(base, "general.architecture")
    shapes = {t.name: tuple(int(n) for n in t.shape) for t in base.tensors}
    for tensor in adapter.tensors:
        name, _, part = tensor.name.rpartition(".")
        target = shapes.get(name)
        # ggml order: lora_a is (in, r) against the weight's (in, out); lora_b is (r, out).
        side = 0 if part == "lora_a" else 1
        if arch != base_arch or target is None or int(tensor.shape[side]) != target[side]:
            found = f"{name} is missing" if target is None else f"{name} is {target}, the adapter's {part} {tuple(tensor.shape)}"
            if arch != base_arch:
                found = f"architecture {arch!r}, the model's {base_arch!r}"
            raise AdapterMismatchError(f"LoRA adapter {lora} does not fit {model.name} ({found}): apply it to the "
                                       "base model it was trained on")


# --------------------------------------------------------------------------- exporting


@dataclass(frozen=True)
class ExportResult:
    gguf: str
    quant: str
    lora: bool
    base: str
    adapter: str | None
    bytes: int
    spec: str  # the model spec that loads it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        kind = "LoRA adapter GGUF" if self.lora else "model GGUF"
        return f"wrote {self.gguf} ({kind}, {self.quant}, {self.bytes / 2**20:.1f} MiB); load it with {self.spec}"


def check_export_target(out: str | Path, overwrite: bool) -> Path:
    from divconq.safeio import check_writable_target

    out = check_writable_target(out, "--gguf")
    if out.suffix.lower() != ".gguf":
        raise DivconqError(f"--gguf {out} must name a .gguf file")
    if out.exists() and not overwrite:
        raise DivconqError(f"{out} already exists: pass --overwrite to replace it, or choose another --gguf path")
    return out


def export_gguf(adapter: str | Path | None, out: str | Path, *, base: str | None = None, quant: Quant | None = None,
                lora_gguf: bool = False, overwrite: bool = False, trust_adapter: bool = False,
                progress: bool = True) -> ExportResult:
    """Write a trained student (``base`` plus the adapter in ``adapter``) as one GGUF file.

    ``base``: the model spec the adapter was trained on (default: its manifest's). With
    ``lora_gguf``, the adapter alone is written, unmerged. ``quant``: q8_0 for a model, f32
    for a LoRA GGUF unless given. Every input is checked before the
    model loads; the file is written under a temporary name and renamed into place.
    """
    from divconq.nodes.models import _check_adapter_files, default_gguf_path, read_adapter_manifest

    out = check_export_target(out, overwrite)
    quant = quant or ("f32" if lora_gguf else "q8_0")
    if quant not in QUANTS:
        raise DivconqError(f"unknown --quant {quant!r}: use one of {', '.join(QUANTS)}")
    adapter_dir = Path(adapter).expanduser() if adapter else None
    if lora_gguf and adapter_dir is None:
        raise DivconqError("--lora-gguf writes an adapter: pass --adapter DIR")
    if lora_gguf and quant not in LORA_QUANTS:
        raise DivconqError(f"a LoRA GGUF is written as {', '.join(LORA_QUANTS)}, not {quant}: drop --quant or pick one of those")
    if adapter_dir is not None:
        _check_adapter_files(adapter_dir, trust_adapter)
    base = base or ((read_adapter_manifest(adapter_dir) or {}).get("base_model") if adapter_dir else None)
    if not base:
        raise DivconqError("nothing names the base model: pass --base SPEC (default or hf:<dir>) or an --adapter "
                           "dir of `divconq train`, whose manifest names it")
    _check_local_base(base)
    source = llamacpp.require_source("divconq export")
    if quant in _QUANTIZED:
        llamacpp.require_tool("llama-quantize", f"--quant {quant}")
    if not lora_gguf and importlib.util.find_spec("sentencepiece") is None:
        raise DivconqError(f"llama.cpp's converter needs the sentencepiece package: {llamacpp.EXTRA_INSTALL}")
    base_path, label = _local_base(base)
    out.parent.mkdir(parents=True, exist_ok=True)
    steps = ["load", "convert"] + (["quantize"] if quant in _QUANTIZED else []) + ["check"]
    with _Steps(steps, enabled=progress) as bar, tempfile.TemporaryDirectory(prefix=".export-", dir=out.parent) as work:
        work_dir = Path(work)
        bar.next("load")
        merged = _merged_model_dir(base_path, label, adapter_dir, work_dir, trust_adapter, check_only=lora_gguf)
        bar.next("convert")
        scratch = work_dir / "out.gguf"
        if lora_gguf:
            _convert(source / "convert_lora_to_gguf.py", ["--base", str(base_path), "--outtype", quant,
                                                          "--outfile", str(scratch), str(adapter_dir)])
        else:
            first = "f32" if quant in _QUANTIZED else quant
            _convert(source / "convert_hf_to_gguf.py", [str(merged), "--outtype", first, "--outfile", str(scratch)])
            if quant in _QUANTIZED:
                bar.next("quantize")
                scratch = _quantize(scratch, work_dir / "quantized.gguf", _QUANTIZED[quant])
        bar.next("check")
        if lora_gguf:
            # The fingerprint check above vouched for the base; the shipped GGUF is at hand to check shapes too.
            check_lora_gguf(scratch, default_gguf_path() if base == "default" else None)
        else:
            check_model_gguf(scratch)
        _move_into_place(scratch, out)
    spec = (f"llamacpp:{'default' if base == 'default' else '<base model.gguf>'}+lora={out}" if lora_gguf
            else f"llamacpp:{out}")
    return ExportResult(str(out), quant, lora_gguf, base, str(adapter_dir) if adapter_dir else None,
                        out.stat().st_size, spec)


def _check_local_base(base: str) -> None:
    """A base export can read: 'default', or a local transformers model dir (cheap checks only)."""
    from divconq.nodes.models import parse_spec

    spec = parse_spec(base)
    if spec.kind not in ("default", "hf") or spec.adapter:
        raise DivconqError(f"cannot export base {base!r}: use a local model without an adapter, 'default' or 'hf:<dir>'")
    if spec.kind == "hf" and not (Path(spec.target).expanduser() / "config.json").is_file():
        raise DivconqError(f"base {base!r} is not a local model dir (no config.json): export needs the model's files "
                           "on disk, hf:<dir>")


def _local_base(base: str) -> tuple[Path, str]:
    from divconq.nodes.models import DEFAULT_MODEL_NAME, default_model_dir, parse_spec

    spec = parse_spec(base)
    if spec.kind == "default":
        return default_model_dir(), DEFAULT_MODEL_NAME
    return Path(spec.target).expanduser(), spec.target


def _merged_model_dir(base_path: Path, label: str, adapter_dir: Path | None, work: Path, trust: bool,
                      *, check_only: bool) -> Path:
    """The base with the adapter merged, saved as a transformers model dir (the converter's
    input). ``check_only``: load and check that the adapter fits this base, save nothing."""
    from divconq.nodes.models import attach_adapter, load_causal_lm

    model, tokenizer = load_causal_lm(str(base_path))
    if adapter_dir is not None:
        model = attach_adapter(model, adapter_dir, label, merge=True, trust=trust)
    if check_only:
        return base_path
    merged = work / "merged"
    model.save_pretrained(merged)
    tokenizer.save_pretrained(merged)
    return merged


def _convert(script: Path, args: list[str]) -> None:
    """One of llama.cpp's converters, in a child Python: its failure is one line."""
    result = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if result.returncode:
        lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith(("INFO:", "WARNING:"))]
        reason = lines[-1].strip()[:240] if lines else f"exit code {result.returncode}"
        raise DivconqError(f"llama.cpp's {script.name} could not convert this model ({reason}): export a model "
                           "architecture and tokenizer that llama.cpp supports")


def _quantize(source: Path, target: Path, kind: str) -> Path:
    binary = llamacpp.require_tool("llama-quantize", f"--quant {kind.lower()}")
    result = subprocess.run([str(binary), str(source), str(target), kind], capture_output=True, text=True)
    if result.returncode:
        tail = (result.stderr or result.stdout).strip().splitlines()
        raise DivconqError(f"llama-quantize could not write {kind} ({tail[-1][:200] if tail else result.returncode}): "
                           "try --quant q8_0")
    source.unlink()
    return target


def _move_into_place(scratch: Path, out: Path) -> None:
    from divconq.safeio import atomic_path

    with atomic_path(out, "--gguf") as target:
        shutil.move(scratch, target)


class _Steps:
    """A progress bar over the export's steps (each takes seconds to minutes)."""

    def __init__(self, steps: list[str], *, enabled: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=len(steps), desc="export", unit="step", disable=not enabled or not sys.stderr.isatty())
        self.started = False

    def next(self, name: str) -> None:
        if self.started:
            self.bar.update(1)
        self.started = True
        self.bar.set_postfix_str(name)

    def __enter__(self) -> "_Steps":
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.bar.update(1)
        self.bar.close()


# --------------------------------------------------------------------------- caches


def adapter_fingerprint(adapter_dir: Path) -> str:
    """A short hash of an adapter's config and weights: a retrained adapter gets a new one."""
    digest = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
        path = adapter_dir / name
        if path.is_file():
            digest.update(name.encode())
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


CACHED_MODEL_QUANT: Quant = "q8_0"  # hf: models converted for llama.cpp: near-lossless, a quarter of fp32's bytes


def cached_lora_gguf(adapter_dir: Path, base: str = "default", *, trust_adapter: bool = False) -> Path:
    """The adapter as an f32 LoRA GGUF, converted once into the cache: keyed by the adapter's
    fingerprint and its base, so a retrained adapter is converted again. The conversion
    checks that the adapter fits the base (its manifest's fingerprint)."""
    key = hashlib.sha256(f"{adapter_fingerprint(adapter_dir)}|{base}".encode()).hexdigest()[:16]
    target = _models_cache() / f"lora-{key}.gguf"
    if not target.is_file():
        export_gguf(adapter_dir, target, base=base, quant="f32", lora_gguf=True, overwrite=True,
                    trust_adapter=trust_adapter, progress=False)
    return target


def cached_student_gguf(adapter_dir: Path, base: str = "default", *, trust_adapter: bool = False) -> Path:
    """The base with the adapter merged, as a Q8_0 GGUF converted once into the cache (keyed
    like ``cached_lora_gguf``). How ``default`` runs its student through llama.cpp: faster than
    the shipped Q4_1 GGUF with a LoRA GGUF applied at run time, and closer to the transformers
    path's sub-questions (bench/RESULTS.md)."""
    key = hashlib.sha256(f"{adapter_fingerprint(adapter_dir)}|{base}|{CACHED_MODEL_QUANT}".encode()).hexdigest()[:16]
    target = _models_cache() / f"student-{key}.{CACHED_MODEL_QUANT}.gguf"
    if not target.is_file():
        export_gguf(adapter_dir, target, base=base, quant=CACHED_MODEL_QUANT, overwrite=True,
                    trust_adapter=trust_adapter, progress=False)
    return target


def cached_model_gguf(model_dir: Path) -> Path:
    """A transformers model dir as a GGUF, converted once into the cache (keyed by its path
    and its files' sizes and times, so a changed model is converted again)."""
    model_dir = model_dir.resolve()
    if not (model_dir / "config.json").is_file():
        raise ModelSpecError(f"{model_dir} is not a local model dir (no config.json): llama.cpp needs the model's "
                             "files on disk")
    stamp = "|".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in sorted(model_dir.iterdir())
                     if f.is_file())
    key = hashlib.sha256(f"{model_dir}|{stamp}|{CACHED_MODEL_QUANT}".encode()).hexdigest()[:16]
    target = _models_cache() / f"{model_dir.name}-{key}.{CACHED_MODEL_QUANT}.gguf"
    if not target.is_file():
        export_gguf(None, target, base=f"hf:{model_dir}", quant=CACHED_MODEL_QUANT, overwrite=True, progress=False)
    return target


def _models_cache() -> Path:
    from divconq.nodes.models import _cache_root

    path = _cache_root() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path
