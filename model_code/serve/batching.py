"""Dynamic batching: concurrent requests with the same sampling settings become one
Generator.generate call.

A request (its prompts, n, candidates, seed and sampling overrides) waits in a bounded queue;
one worker thread runs the generator. When the worker is free it takes the oldest request and,
if that request carries no seed, every queued request with the same settings and no seed, up to
`max_batch` prompts, waiting at most `window_s` after the first one arrived for company (under
load the queue fills while the generator works, so batches form without any waiting). A full
queue refuses new requests with QueueFull (the server answers 503).

Seeds. Generator.generate draws all prompts of one call from one torch.Generator, so a prompt's
images depend on which other prompts share its call. A client that sends a seed is promised the
same images for the same request every time, so seeded requests always run alone, exactly as
they would unbatched (tests/integration/test_serve.py checks it). Unseeded requests are merged.
The server draws an unseeded request's seed before rewriting its prompt (model.py) and passes it
as `drawn_seed`: a call runs with its first request's drawn seed, so a request that ran alone
(every request on an idle server) is reproduced exactly by resending its reported seed; one that
shared a call gets its revised prompt back from that seed, its pixels only by asking with it.

A request of several prompts is admitted whole or not at all (`enqueue`), and what was admitted
is withdrawn (`withdraw`) when the request fails or its client goes away, so no refused request
keeps the generator busy.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)


def first_batch(pending: Sequence[Any], max_batch: int) -> list[int]:
    """The batching policy, one place for the server's queue and the MLflow pyfunc model: the
    indices of the batch that `pending[0]` opens. Items have `prompts`, `seed` and `key` (the
    settings that must match). A seeded item runs alone (its images must not depend on its
    company); an unseeded one takes every later unseeded item with the same key, in order, while
    the prompts fit in max_batch."""
    first = pending[0]
    batch, size = [0], len(first.prompts)
    if first.seed is None:
        for i, item in enumerate(pending[1:], start=1):
            if item.seed is None and item.key == first.key and size + len(item.prompts) <= max_batch:
                batch.append(i)
                size += len(item.prompts)
    return batch


class QueueFull(Exception):
    """The generator's queue is full: try again later (HTTP 503)."""


class Closed(Exception):
    """The batcher was closed (the model stopped): nothing more is generated."""


@dataclass
class Work:
    """One request for the queue. seed: the client's (the request runs alone); drawn_seed: the
    server's for an unseeded request (mergeable; the call's seed when it comes first)."""
    prompts: list[str]
    n: int = 1
    candidates: int | None = None
    seed: int | None = None
    settings: dict | None = None
    drawn_seed: int | None = None


@dataclass
class _Job:
    prompts: list[str]
    n: int
    candidates: int | None
    seed: int | None
    settings: tuple            # sorted (key, value) pairs of sampling overrides
    future: asyncio.Future
    drawn_seed: int | None = None
    arrived: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> tuple:
        return (self.n, self.candidates, self.settings)


class Batcher:
    """Queue + one generator thread. `generate(prompts, n, candidates, seed, **settings)` must
    return one result per prompt, in order (Generator.generate does)."""

    def __init__(self, generate: Callable[..., Sequence[Any]], max_batch: int = 16, window_s: float = 0.01,
                 queue_size: int = 64, metrics=None):
        if max_batch < 1 or queue_size < 1 or window_s < 0:
            raise ValueError("max_batch and queue_size must be >= 1 and window_s >= 0")
        self.generate, self.max_batch, self.window_s, self.queue_size = generate, max_batch, window_s, queue_size
        self.metrics = metrics
        self._pending: collections.deque[_Job] = collections.deque()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="easel-generate")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.closed = False
        self.calls = 0   # Generator.generate calls so far

    # -------------------------------------------------------------- public
    @property
    def depth(self) -> int:
        return len(self._pending)

    async def submit(self, prompts: Sequence[str], n: int = 1, candidates: int | None = None,
                     seed: int | None = None, settings: dict | None = None) -> list:
        """Queue one request; returns (its results, one per prompt, and the seed its call used).
        Raises QueueFull or Closed."""
        (future,) = self.enqueue([Work(list(prompts), n, candidates, seed, settings)])
        try:
            return await future
        except asyncio.CancelledError:
            self.withdraw([future])
            raise

    def enqueue(self, works: Sequence[Work]) -> list[asyncio.Future]:
        """Queue several requests together: all of them, or none (QueueFull) when they do not
        all fit. Returns their futures, in order (each: (results, the call's seed))."""
        if self.closed:
            raise Closed("the generator was stopped")
        self._ensure_worker()
        if len(self._pending) + len(works) > self.queue_size:
            if self.metrics:
                self.metrics.queue_rejections.inc()
            need = f"; this request needs {len(works)} places" if len(works) > 1 else ""
            raise QueueFull(f"the generator queue is full ({len(self._pending)} of {self.queue_size} places "
                            f"taken{need}); retry later")
        jobs = [_Job(list(w.prompts), int(w.n), w.candidates, w.seed, tuple(sorted((w.settings or {}).items())),
                     self._loop.create_future(), w.drawn_seed) for w in works]
        self._pending.extend(jobs)
        self._depth_changed()
        self._wake.set()
        return [j.future for j in jobs]

    def withdraw(self, futures: Sequence[asyncio.Future]) -> None:
        """Take the requests of `futures` off the queue and cancel them (one already generating
        finishes, and its result is dropped)."""
        ids = {id(f) for f in futures}
        before = len(self._pending)
        self._pending = collections.deque(j for j in self._pending if id(j.future) not in ids)
        if len(self._pending) != before:
            self._depth_changed()
        for f in futures:
            if not f.done():
                f.cancel()

    def close(self) -> None:
        self.closed = True
        if self._task is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -------------------------------------------------------------- the worker
    def _ensure_worker(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            # first use, or a new event loop (a restarted server): state belongs to one loop
            self._loop, self._wake = loop, asyncio.Event()
            self._task = loop.create_task(self._run(), name="easel-batcher")

    def _depth_changed(self) -> None:
        if self.metrics:
            self.metrics.queue_depth.set(len(self._pending))

    def _take_batch(self) -> list[_Job]:
        pending = list(self._pending)
        taken = set(first_batch(pending, self.max_batch))
        self._pending = collections.deque(j for i, j in enumerate(pending) if i not in taken)
        self._depth_changed()
        return [pending[i] for i in sorted(taken)]

    async def _run(self) -> None:
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            first = self._pending[0]
            if first.seed is None and len(first.prompts) < self.max_batch:
                # company may be on its way: wait out the rest of the window the first job opened
                delay = first.arrived + self.window_s - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            batch = self._take_batch()
            batch = [j for j in batch if not j.future.done()]   # callers that gave up
            if batch:
                await self._execute(batch)

    async def _execute(self, batch: list[_Job]) -> None:
        head = batch[0]
        prompts = [p for j in batch for p in j.prompts]
        # a seeded request runs alone with its seed; a merged batch of unseeded requests runs with
        # its first request's drawn seed (or a fresh one)
        seed = next((s for s in (head.seed, head.drawn_seed) if s is not None), None)
        seed = seed if seed is not None else secrets.randbelow(2**31)
        t0 = time.perf_counter()
        try:
            results = await self._loop.run_in_executor(
                self._executor, lambda: self.generate(prompts, head.n, head.candidates, seed, **dict(head.settings)))
        except Exception as e:  # the generator failed: every request of the batch learns why
            log.exception("generation failed for a batch of %d prompts", len(prompts))
            for j in batch:
                if not j.future.done():
                    j.future.set_exception(e)
            return
        self.calls += 1
        if self.metrics:
            self.metrics.generate_seconds.observe(time.perf_counter() - t0)
            self.metrics.batch_prompts.observe(len(prompts))
            self.metrics.batch_requests.observe(len(batch))
        i = 0
        for j in batch:
            part = list(results[i:i + len(j.prompts)])
            i += len(j.prompts)
            if not j.future.done():
                j.future.set_result((part, seed))
