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


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread per test process: the models under test are tiny and these boxes
    have 2 shared cores, where OpenMP's spinning threads cost 10-20x the CPU time of one."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


pytest_plugins = ["tests.servers"]
