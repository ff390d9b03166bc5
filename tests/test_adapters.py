"""Adapters divconq cannot vouch for are refused with one line, before the base is loaded:
no manifest (nothing says which base it fits), a manifest that is not an object, pickled
weights, truncated safetensors. ``+trust_adapter`` loads one without a manifest."""

import json
import shutil

import pytest
import torch
from test_models import make_adapter

from divconq.cli import main
from divconq.errors import ModelSpecError
from divconq.nodes import load_chat_model, parse_spec
from divconq.nodes.manifest import ADAPTER_MANIFEST, read_adapter_manifest, write_adapter_manifest


@pytest.fixture(scope="module")
def plain_adapter(tiny_model_dir, tmp_path_factory):
    """A PEFT adapter as `peft` saves it, with no divconq manifest."""
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("plain"), manifest=False)


@pytest.fixture(scope="module")
def good_adapter(tiny_model_dir, tmp_path_factory):
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("good"))


def _copy(adapter, tmp_path):
    return shutil.copytree(adapter, tmp_path / "adapter")


def test_an_adapter_without_a_manifest_is_refused(tiny_model_dir, plain_adapter):
    with pytest.raises(ModelSpecError, match=rf"has no {ADAPTER_MANIFEST}.*\+trust_adapter"):
        load_chat_model(f"hf:{tiny_model_dir}+adapter={plain_adapter}")


def test_trust_adapter_loads_it(tiny_model_dir, plain_adapter):
    assert parse_spec(f"hf:{tiny_model_dir}+adapter={plain_adapter}+trust_adapter").trust_adapter
    bare = load_chat_model(f"hf:{tiny_model_dir}", max_new_tokens=6)
    trusted = load_chat_model(f"hf:{tiny_model_dir}+adapter={plain_adapter}+trust_adapter", max_new_tokens=6)
    changed = [not torch.equal(a, b) for a, b in zip(bare.llm.pipeline.model.parameters(),
                                                     trusted.llm.pipeline.model.parameters())]
    assert any(changed)


def test_trust_adapter_needs_an_adapter(tiny_model_dir):
    with pytest.raises(ModelSpecError, match="goes after an adapter"):
        parse_spec(f"hf:{tiny_model_dir}+trust_adapter")


def test_a_manifest_that_is_a_list_is_one_error(tiny_model_dir, good_adapter, tmp_path):
    adapter = _copy(good_adapter, tmp_path)
    (adapter / ADAPTER_MANIFEST).write_text(json.dumps(["base", "fingerprint"]))
    with pytest.raises(ModelSpecError, match="is a JSON list, not an object"):
        load_chat_model(f"hf:{tiny_model_dir}+adapter={adapter}")


def test_pickled_weights_are_refused_unless_trusted(tiny_model_dir, good_adapter, tmp_path):
    adapter = _copy(good_adapter, tmp_path)
    weights = adapter / "adapter_model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(weights), adapter / "adapter_model.bin")
    weights.unlink()
    with pytest.raises(ModelSpecError, match="adapter_model.bin, a pickle"):
        load_chat_model(f"hf:{tiny_model_dir}+adapter={adapter}")


def test_a_pickle_that_is_not_weights_fails_in_one_line_even_when_trusted(tiny_model_dir, good_adapter, tmp_path, capsys):
    adapter = _copy(good_adapter, tmp_path)
    (adapter / "adapter_model.safetensors").unlink()
    torch.save({"not": object()}, adapter / "adapter_model.bin")  # needs weights_only=False to load
    assert main(["ask", "What is 2+3?", "--mode", "single", "--solver", f"hf:{tiny_model_dir}",
                 "--decomposer", f"hf:{tiny_model_dir}+adapter={adapter}+trust_adapter"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "cannot load adapter" in errors[0] and "weights_only" not in errors[0]


def test_truncated_safetensors_are_one_error(tiny_model_dir, good_adapter, tmp_path, capsys):
    adapter = _copy(good_adapter, tmp_path)
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    assert main(["ask", "What is 2+3?", "--mode", "single", "--solver", f"hf:{tiny_model_dir}",
                 "--decomposer", f"hf:{tiny_model_dir}+adapter={adapter}"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "cannot load adapter" in errors[0] and "damaged" in errors[0]


def test_the_manifest_training_writes_is_the_one_loading_reads(tmp_path):
    written = write_adapter_manifest(tmp_path, {"base_model": "hf:/m", "base_fingerprint": "abc", "metrics": {"steps": 2}})
    assert written.name == ADAPTER_MANIFEST and read_adapter_manifest(tmp_path)["metrics"] == {"steps": 2}
    with pytest.raises(ValueError, match="needs base_fingerprint"):
        write_adapter_manifest(tmp_path, {"base_model": "hf:/m"})  # loading could not check the base
    assert read_adapter_manifest(tmp_path / "elsewhere") is None
