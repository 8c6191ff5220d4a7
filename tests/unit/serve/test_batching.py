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


def test_a_request_is_queued_whole_or_not_at_all_and_can_be_withdrawn():
    import asyncio

    import pytest

    from model_code.serve.batching import Batcher, Closed, QueueFull, Work
    generated = []

    def generate(prompts, n, candidates, seed, **settings):
        generated.extend(prompts)
        return list(prompts)

    async def run():
        b = Batcher(generate, max_batch=8, window_s=0.2, queue_size=3)
        first = b.enqueue([Work(["a"], seed=1)])
        with pytest.raises(QueueFull, match="needs 3 places"):
            b.enqueue([Work(["b"], seed=2), Work(["c"], seed=3), Work(["d"], seed=4)])
        assert b.depth == 1                                  # none of the refused request was queued
        two = b.enqueue([Work(["e"], seed=5), Work(["f"], seed=6)])
        b.withdraw(two)                                      # its client went away
        assert b.depth == 1 and all(f.cancelled() for f in two)
        assert await first[0] == (["a"], 1)
        await asyncio.sleep(0.3)
        b.close()
        with pytest.raises(Closed):
            b.enqueue([Work(["g"])])

    asyncio.run(run())
    assert generated == ["a"]


def test_an_unseeded_call_runs_with_its_first_requests_drawn_seed():
    import asyncio

    from model_code.serve.batching import Batcher, Work
    seeds = []

    async def run():
        b = Batcher(lambda p, n, c, seed, **k: seeds.append(seed) or list(p), window_s=0.05)
        (f,) = b.enqueue([Work(["a"], drawn_seed=1234)])
        out = await f
        b.close()
        return out

    assert asyncio.run(run()) == (["a"], 1234) and seeds == [1234]


def test_a_transformers_drawn_seed_travels_marked_so_the_predictor_may_merge_it():
    from model_code.serve.protocol import parse_instance
    from model_code.serve.records import ImageRequest
    from model_code.serve.config import serve_config
    cfg = serve_config("tiny")
    drawn = ImageRequest("a red circle", seed=11, seed_drawn=True)
    assert drawn.wire()["seed_drawn"] is True and "seed_drawn" not in ImageRequest("x", seed=11).wire()
    back = parse_instance(drawn.wire(), cfg)
    assert (back.seed, back.seed_drawn) == (11, True)
