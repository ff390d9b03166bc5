"""Shared fixtures: tiny real Hugging Face models built on the spot (nothing downloaded)."""

import os

import pytest
from tiny_models import build_tiny_chat_model

# Tests never reach a model hub: everything they load is built here or shipped in a package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny-base"), seed=0)


@pytest.fixture(scope="session")
def other_tiny_model_dir(tmp_path_factory):
    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny-other"), seed=1)
