"""The adapter manifest: what ``divconq train`` writes beside an adapter and loading checks.

``divconq_adapter.json`` names the base model an adapter was trained on and that base's
fingerprint (plus the data, settings and metrics of the run). Training writes it last,
so its presence marks a complete adapter; loading refuses an adapter on a base whose
fingerprint differs. Both sides import this module, so the file name, the fingerprint
and the reader exist once. Light: torch loads only when a fingerprint is taken.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from divconq.errors import ModelSpecError

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_MANIFEST",
    "is_adapter_dir",
    "model_fingerprint",
    "read_adapter_manifest",
    "write_adapter_manifest",
]

ADAPTER_MANIFEST = "divconq_adapter.json"
ADAPTER_CONFIG = "adapter_config.json"  # PEFT's: every adapter dir holds one

_FINGERPRINT_KEYS = {
    "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "max_position_embeddings", "rope_theta",
}


def is_adapter_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a PEFT adapter (its ``adapter_config.json``)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def model_fingerprint(model: Any) -> str:
    """A short hash that tells base models apart: architecture plus a weight checksum.

    The config alone cannot tell two checkpoints of one architecture apart, so a slice
    of the input embeddings is folded in; reading 64 rows keeps this instant.
    """
    import torch

    config = model.config.to_dict()
    keep = {k: config.get(k) for k in sorted(config) if k in _FINGERPRINT_KEYS}
    embeddings = model.get_input_embeddings().weight
    with torch.no_grad():
        # Rounded through bf16 first, so one checkpoint gives one fingerprint whether it
        # was loaded in fp32 (CPU) or bf16 (GPU).
        checksum = float(embeddings[:64].to(torch.bfloat16).double().abs().sum())
    payload = json.dumps(keep, sort_keys=True, default=str) + f"|{checksum:.6e}"
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def read_adapter_manifest(adapter_dir: str | Path) -> dict[str, Any] | None:
    """The divconq manifest of an adapter directory, or None for a plain PEFT adapter."""
    path = Path(adapter_dir) / ADAPTER_MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelSpecError(f"adapter manifest {path} is unreadable ({exc}): retrain or restore the adapter") from None
    if not isinstance(manifest, dict):
        raise ModelSpecError(f"adapter manifest {path} is a JSON {type(manifest).__name__}, not an object: "
                             "retrain or restore the adapter")
    return manifest


def write_adapter_manifest(adapter_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """Write the manifest into ``adapter_dir`` (training does so in a scratch dir, then
    installs it last). ``manifest`` must hold ``base_model`` and ``base_fingerprint``."""
    missing = [key for key in ("base_model", "base_fingerprint") if not manifest.get(key)]
    if missing:
        raise ValueError(f"an adapter manifest needs {', '.join(missing)}: loading checks the base against it")
    path = Path(adapter_dir) / ADAPTER_MANIFEST
    path.write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")
    return path
