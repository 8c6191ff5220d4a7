"""Shared test fixtures. Servers bind 127.0.0.1 on free ports and are stopped here."""
import os
import random

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def rng():
    return random.Random(0)


@pytest.fixture(autouse=True)
def _seed():
    import torch
    torch.manual_seed(0)
    yield


pytest_plugins = ["tests.servers"]
