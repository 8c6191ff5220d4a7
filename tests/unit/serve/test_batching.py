"""serve/batching.first_batch: the one batching policy of the server's queue and the pyfunc model."""
from types import SimpleNamespace

from model_code.serve.batching import first_batch


def job(n_prompts=1, seed=None, key=("n1",)):
    return SimpleNamespace(prompts=["p"] * n_prompts, seed=seed, key=key)


def test_unseeded_requests_with_the_same_settings_merge_in_order_up_to_max_batch():
    pending = [job(2), job(1, key=("other",)), job(1), job(1, seed=7), job(3), job(1)]
    assert first_batch(pending, max_batch=4) == [0, 2, 5]      # 2 + 1 + 1; the 3-prompt one does not fit
    assert first_batch(pending, max_batch=16) == [0, 2, 4, 5]


def test_a_seeded_request_runs_alone_and_never_joins_another():
    assert first_batch([job(seed=1), job(seed=1), job()], max_batch=16) == [0]
    assert first_batch([job(), job(seed=1)], max_batch=16) == [0]
