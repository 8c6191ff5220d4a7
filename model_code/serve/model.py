"""The KServe models: `EaselModel` (the predictor) and `EaselTransformer` (safety, rewriting and
provenance in front of a predictor that only generates).

The request path (DESIGN.md, "serve"):
    validate -> prompt safety -> rewrite -> generate `candidates` and keep the n the bundle's
    reranker likes best (Generator.generate) -> resize to the requested size -> image safety -> C2PA-signed PNG

One call carries it, `EaselModel.serve(requests) -> (results, info)`, which every protocol calls
once after parsing its own format: V1 and V2 through KServe's hooks (preprocess parses into an
`Envelope`, predict serves it, postprocess encodes it: the state passes in the envelope), the
OpenAI route directly (openai_route.py). Split in two (`--role transformer` in front of
`--role predictor --generate-only`), the transformer's `serve` checks and rewrites, forwards the
prompts to the predictor (which only generates), then runs image safety and provenance on what
comes back.

The records and errors are in records.py, the wire formats in protocol.py; a model URI is resolved by registry/resolve.py.
"""
from __future__ import annotations

import asyncio
import logging
import secrets

import kserve
from kserve.protocol.infer_type import InferRequest

from model_code.registry.resolve import ResolvedModel, resolve_model
from model_code.serve import batching, provenance, rewrite as rewrite_mod
from model_code.serve.config import parse_size, serve_config
from model_code.serve.protocol import V2_INPUTS, V2_OUTPUTS, decode_v1, decode_v2, encode, parse_v1, parse_v2
from model_code.serve.records import (Envelope, ImageOut, ImageRequest, ImageResult, ServeError, bad_request, png_bytes,
                                      resize)
from model_code.serve.safety import ClipEmbedder, Safety

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- the predictor
class EaselModel(kserve.Model):
    """A generation bundle behind KServe's V1/V2 protocols.

    model_uri: see resolve_model. config: overrides of the serve config (serve_config: the
    bundle's preset supplies the defaults, then EASEL_SERVE_CONFIG and the environment). generate_only: the
    predictor behind an EaselTransformer (no safety, rewriting or provenance here)."""

    def __init__(self, name: str, model_uri: str | None, config: dict | None = None,
                 generate_only: bool = False, metrics=None):
        super().__init__(name)
        self.model_uri, self._config_in, self.generate_only = model_uri, config, generate_only
        self.cfg: dict = {}
        self.metrics = metrics
        self.generator = self.safety = self.rewriter = self.signer = self.batcher = None
        self.text_limit = None   # generate.TextLimit: how many prompt tokens the model reads
        self.resolved: ResolvedModel | None = None
        self.info: dict[str, str] = {}

    # -------------------------------------------------------------- loading
    def _make_config(self, meta: dict) -> dict:
        # the bundle's own resolved serve: section; bundles older than that name their preset
        section = ((meta["config"] or {}).get("serve") or {}) if "config" in meta else None
        return serve_config(meta.get("preset"), overrides=self._config_in, section=section)

    def _model_info(self, meta: dict) -> dict[str, str]:
        r = self.resolved
        lineage = meta.get("lineage") or {}
        return {"name": (r.name if r and r.name else self.name),
                "version": (r.version if r and r.version else str(lineage.get("version") or "local")),
                "recipe": meta.get("recipe", ""),
                "dataset_version": str((r.tags.get("easel.dataset_version") if r else None)
                                       or lineage.get("dataset_version") or "unknown"),
                # a registry version served without a passed gate says so wherever info goes
                "gate": ("n/a" if r is None or r.gated is None else "passed" if r.gated
                         else "UNGATED (served with --allow-ungated)")}

    def _allow_ungated(self) -> bool:
        # the bundle's preset cannot grant this: defaults, EASEL_SERVE_CONFIG, env, --allow-ungated
        return bool(serve_config(None, overrides=self._config_in)["allow_ungated"])

    def load(self) -> bool:
        from model_code.generate import Generator
        self.resolved = resolve_model(self.model_uri, self._allow_ungated())
        self.generator = Generator.load(self.resolved.bundle)
        self.text_limit = self.generator.text_limit
        self.cfg = self._make_config(self.generator.meta)
        self.info = self._model_info(self.generator.meta)
        native = f"{self.generator.image_size}x{self.generator.image_size}"
        self.default_size = parse_size(self.cfg["default_size"] or
                                       (native if native in self.cfg["sizes"] else self.cfg["sizes"][0]))
        if not self.generate_only:
            self._load_policies(ClipEmbedder(self.generator.tokenizer, self.generator.clip))
        self.batcher = batching.Batcher(self.generator.generate, max_batch=self.cfg["max_batch"],
                                        window_s=self.cfg["batch_window_ms"] / 1000.0,
                                        queue_size=self.cfg["queue_size"], metrics=self.metrics)
        self.ready = True
        log.info("model %s ready: %s version %s (%s), gate %s, bundle %s", self.name, self.info["name"],
                 self.info["version"], self.info["recipe"], self.info["gate"], self.resolved.bundle)
        return self.ready

    def _load_policies(self, embedder: ClipEmbedder | None) -> None:
        self.safety = Safety(self.cfg["safety"], embedder)
        self.info["safety"] = self.safety.status   # a concept check off for this CLIP is no secret
        self.rewriter = rewrite_mod.rewriter_from_config(self.cfg)
        self.signer = provenance.signer_from_config(self.cfg)

    def stop(self):
        self.ready = False
        if self.batcher is not None:
            self.batcher.close()

    async def healthy(self) -> bool:
        # ready, and (where it generates) its generator queue still runs
        return bool(self.ready) and (self.batcher is None or not self.batcher.closed)

    # V2 model metadata: the tensors parse_v2 accepts and encode_v2 returns
    def get_input_types(self) -> list[dict]:
        return [dict(t) for t in V2_INPUTS]

    def get_output_types(self) -> list[dict]:
        return [dict(t) for t in V2_OUTPUTS]

    # -------------------------------------------------------------- the request path
    async def serve(self, reqs: list[ImageRequest], headers: dict | None = None,
                    request_id: str | None = None) -> tuple[list[ImageResult], dict]:
        """The one request path, whatever the protocol: prompt safety and rewriting, generation
        (here, or at the predictor behind a transformer), image safety and provenance.
        Returns the results (one per request, images encoded as PNG) and the model info.
        headers, request_id: the client's, forwarded to a predictor (tracing headers)."""
        if not self.generate_only:
            await asyncio.to_thread(self.check_and_rewrite, reqs)   # CLIP runs here: a worker thread
        results, info = await self.produce(reqs, headers, request_id)
        await asyncio.to_thread(self.finish, results, info)
        return results, info

    def check_and_rewrite(self, reqs: list[ImageRequest]) -> None:
        """Prompt length and safety, then the seed and rewriting. Refusal -> 400."""
        self.check_lengths(reqs, [r.prompt for r in reqs])
        verdicts = self.safety.check_prompts([r.prompt for r in reqs])
        for i, v in enumerate(verdicts):
            if not v.allowed:
                if self.metrics:
                    self.metrics.refusals.labels(v.policy).inc()
                where = "prompt" if len(reqs) == 1 else f"prompt[{i}]"
                raise ServeError(400, f"Your request was rejected by the safety system ({v.policy}): {v.reason}",
                                 "content_policy_violation", where)
        for r in reqs:
            if r.seed is None:
                # drawn before the rewrite, which uses it too: the reported seed, sent back,
                # gives the same revised prompt and (see batching.py) the same images
                r.seed, r.seed_drawn = secrets.randbelow(min(self.cfg["seed_max"], 2**31 - 1) + 1), True
            if r.rewrite and self.rewriter is not None:
                rw = self.rewriter.rewrite(r.prompt, r.seed)
                r.revised_prompt, r.rewrite_source, r.rewrite_note = rw.text, rw.source, rw.note
                if self.metrics:
                    self.metrics.rewrites.labels(rw.source).inc()
            else:
                r.revised_prompt, r.rewrite_source = r.prompt, "off"
        # a chat endpoint's rewrite is model output: check it like a prompt before using it
        chat = [r for r in reqs if r.rewrite_source == "chat"]
        if chat:
            for r, v in zip(chat, self.safety.check_prompts([r.revised_prompt for r in chat])):
                if not v.allowed:
                    r.revised_prompt, r.rewrite_source = r.prompt, "unsafe-rewrite-dropped"
        # a rewrite the model cannot read whole is not used: the prompt (which fits) goes as written
        for r in reqs:
            why = self.text_limit.refusal(r.revised_prompt) if self.text_limit and r.revised_prompt else None
            if why and r.revised_prompt != r.prompt:
                r.revised_prompt, r.rewrite_source = r.prompt, "too-long-rewrite-dropped"
                r.rewrite_note = f"the rewritten prompt {why}; the prompt went to the model as written"

    def check_lengths(self, reqs: list[ImageRequest], prompts: list[str]) -> None:
        """400 for a prompt longer than the model reads (generate.TextLimit decides)."""
        if self.text_limit is None:
            return
        for i, (r, p) in enumerate(zip(reqs, prompts)):
            why = self.text_limit.refusal(p)
            if why:
                raise bad_request("prompt" if len(reqs) == 1 else f"prompt[{i}]", why)

    async def produce(self, reqs: list[ImageRequest], headers: dict | None = None,
                      request_id: str | None = None) -> tuple[list[ImageResult], dict]:
        """Generate each request's images through the dynamic batcher: all of them admitted to
        its queue or none (503), and all withdrawn when the request fails or is abandoned."""
        if self.generate_only:   # behind a transformer, which checked already; a direct client did not
            self.check_lengths(reqs, [r.generation_prompt for r in reqs])
        settings = dict(self.cfg["sampling"])
        cand = self.cfg["candidates"]
        try:
            futures = self.batcher.enqueue([batching.Work([r.generation_prompt], r.n, cand,
                                                          None if r.seed_drawn else r.seed, settings,
                                                          drawn_seed=r.seed if r.seed_drawn else None)
                                            for r in reqs])
        except batching.QueueFull as e:
            raise ServeError(503, str(e), "server_busy", type_="server_error") from e
        except batching.Closed as e:
            raise ServeError(503, f"model {self.name} is not ready: {e}", "model_not_ready",
                             type_="server_error") from e
        try:
            done = await asyncio.gather(*futures)
        except BaseException:
            self.batcher.withdraw(futures)
            raise
        results = []
        for r, ((gen,), call_seed) in zip(reqs, done):
            side = r.size or self.default_size
            emb = gen.embeddings if gen.embeddings is not None else [None] * len(gen.images)
            outs = [ImageOut(resize(im, side), float(s), embedding=e)
                    for im, s, e in zip(gen.images, gen.scores, emb)]
            results.append(ImageResult(r, outs, r.seed if r.seed is not None else call_seed, side))
        return results, self.info

    def finish(self, results: list[ImageResult], info: dict) -> None:
        """Image safety (reusing the reranking's CLIP embeddings), then PNG + C2PA for every
        image kept."""
        for res in results:
            if not self.generate_only and self.safety is not None:
                verdicts = self.safety.check_images([o.image for o in res.images],
                                                    [o.embedding for o in res.images])
                for o, v in zip(res.images, verdicts):
                    if not v.allowed:
                        o.image, o.withheld = None, {"policy": v.policy, "reason": v.reason}
                        if self.metrics:
                            self.metrics.withheld.labels(v.policy).inc()
            for o in res.images:
                if o.image is None:
                    continue
                png = png_bytes(o.image)
                if self.signer is not None and not self.generate_only:
                    png = self.signer.sign(png, provenance.ProvenanceInfo(
                        model=info["name"], model_version=info["version"], recipe=info.get("recipe", ""),
                        dataset_version=info.get("dataset_version", "unknown"), prompt=res.request.prompt,
                        revised_prompt=res.request.generation_prompt, seed=res.seed, clip_score=o.clip_score,
                        # an image from a version served with --allow-ungated says so in its provenance
                        extra={"gate": info.get("gate", "n/a")}))
                o.png = png

    # -------------------------------------------------------------- KServe's hooks (V1 / V2)
    async def preprocess(self, payload, headers=None) -> Envelope:
        if isinstance(payload, InferRequest):
            return Envelope("v2", parse_v2(payload, self.cfg, headers), payload.id, payload.request_outputs,
                            bool(payload.use_binary_outputs))
        return Envelope("v1", parse_v1(payload, self.cfg, headers))

    def validate(self, payload):
        # an Envelope is parsed and validated already (KServe's check reads dict payloads)
        return payload if isinstance(payload, Envelope) else super().validate(payload)

    async def predict(self, payload: Envelope, headers=None, response_headers=None) -> Envelope:
        payload.results, payload.info = await self.serve(payload.requests, headers, payload.request_id)
        return payload

    async def postprocess(self, result: Envelope, headers=None, response_headers=None):
        return encode(result, self.name)


# ---------------------------------------------------------------- the transformer
class EaselTransformer(EaselModel):
    """Validation, prompt safety and rewriting (preprocess) and image safety and provenance
    (postprocess) in front of a generate-only EaselModel at `predictor_host` (host:port).

    The transformer needs the bundle's CLIP for concept matching (model_uri: the same model);
    without a model_uri only the blocklist and patterns run (a warning says so)."""

    def __init__(self, name: str, model_uri: str | None, predictor_host: str, config: dict | None = None,
                 protocol: str = "v1", metrics=None, timeout_s: int = 600):
        super().__init__(name, model_uri, config, generate_only=False, metrics=metrics)
        from kserve.predictor_config import PredictorConfig
        if protocol not in ("v1", "v2"):
            raise ValueError(f"protocol: the transformer talks v1 or v2 to its predictor, got {protocol!r}")
        if not predictor_host:
            raise ValueError("predictor_host: a transformer needs its predictor's HOST:PORT")
        self._predictor = PredictorConfig(predictor_host=predictor_host, predictor_protocol=protocol,
                                          predictor_request_timeout_seconds=timeout_s)

    @property
    def predictor_config(self):
        # our own, not KServe's process-wide one: two servers may share this process (tests)
        return self._predictor

    def load(self) -> bool:
        from model_code.generate import bundle_text_limit, read_bundle_meta
        embedder, meta = None, {}
        if self.model_uri:
            self.resolved = resolve_model(self.model_uri, self._allow_ungated())
            meta = read_bundle_meta(self.resolved.bundle)
            embedder = ClipEmbedder.from_bundle(self.resolved.bundle)
            self.text_limit = bundle_text_limit(self.resolved.bundle, embedder.tokenizer)
        else:
            # the predictor still refuses a prompt longer than its model reads
            log.warning("transformer without a model URI: no CLIP concept matching for prompts or images")
        self.cfg = self._make_config(meta)
        self.info = self._model_info(meta)
        self._load_policies(embedder)
        self.ready = True
        return True

    async def produce(self, reqs: list[ImageRequest], headers: dict | None = None,
                      request_id: str | None = None) -> tuple[list[ImageResult], dict]:
        """Generation at the predictor: the checked, rewritten prompts go out in the predictor's
        protocol; its answer comes back decoded, with the version it served."""
        wire = [r.wire() for r in reqs]
        if self._predictor.protocol == "v1":
            resp = await self._forward({"instances": wire}, headers)
            results, info = decode_v1(resp, reqs)
        else:
            resp = await self._forward(self._v2_request(wire, request_id), headers)
            results, info = decode_v2(resp, reqs)
        return results, {**self.info, **{k: v for k, v in info.items() if v}}   # the predictor knows its version

    def _v2_request(self, wire: list[dict], request_id: str | None) -> InferRequest:
        from kserve.protocol.infer_type import InferInput
        k = len(wire)
        inputs = [InferInput("prompt", [k], "BYTES", [w["prompt"] for w in wire]),
                  InferInput("n", [k], "INT32", [w["n"] for w in wire]),
                  InferInput("rewrite", [1], "BOOL", [False])]
        # one [k] tensor per field: prompts without a seed get a fresh one, marked drawn (a
        # client's seed runs alone at the predictor; a drawn one may share a generator call)
        if any("seed" in w for w in wire):
            import secrets
            inputs.append(InferInput("seed", [k], "INT64",
                                     [w["seed"] if "seed" in w else secrets.randbelow(2**31) for w in wire]))
            inputs.append(InferInput("seed_drawn", [k], "BOOL", [w.get("seed_drawn", "seed" not in w) for w in wire]))
        if any("size" in w for w in wire):   # "" = the predictor's default size
            inputs.append(InferInput("size", [k], "BYTES", [w.get("size", "") for w in wire]))
        return InferRequest(model_name=self.name, infer_inputs=inputs, request_id=request_id)

    async def _forward(self, payload, headers: dict | None):
        """KServe's predictor call (REST, the configured protocol); its errors as ServeErrors."""
        import httpx
        try:
            return await kserve.Model.predict(self, payload, headers)
        except httpx.HTTPStatusError as e:   # the predictor's 4xx/5xx, passed on with its message
            try:
                body = e.response.json()
                msg = body.get("error") if isinstance(body, dict) else None
            except ValueError:
                msg = None
            status = e.response.status_code
            raise ServeError(status, f"predictor: {msg or e.response.text[:300]}",
                             "server_busy" if status == 503 else "predictor_error") from e
        except httpx.HTTPError as e:
            raise ServeError(502, f"the predictor at {self._predictor.predictor_host} did not answer: "
                                  f"{type(e).__name__}", "predictor_unavailable", type_="server_error") from e
