"""Prompt and image safety: blocklist words (after Unicode normalisation), regular expressions,
and concept matching in the CLIP space of a tiny CLIP built from the tiny preset."""
from __future__ import annotations

import random

import pytest
import torch

from model_code.config import load_preset
from model_code.data import shapes
from model_code.serve.config import serve_config
from model_code.serve.safety import ClipEmbedder, Safety, normalize
from model_code.text.tokenizer import TextTokenizer
from model_code.train.parts import get_part
from tests.bundles import captions


@pytest.fixture(scope="module")
def embedder():
    torch.manual_seed(0)
    cfg = load_preset("tiny")
    tok = TextTokenizer.train(captions(60), cfg["tokenizer"]["vocab_size"], cfg["tokenizer"]["max_text_tokens"])
    return ClipEmbedder(tok, get_part("clip").build(cfg, {"tokenizer": tok}))


def policy(**over) -> dict:
    return serve_config("tiny", overrides={"safety": over})["safety"]


def test_normalize_undoes_the_usual_disguises():
    assert normalize("ＧＯＲＥ") == "gore"                        # fullwidth
    assert normalize("n\u200bu\u00adde") == "nude"                # zero-width space, soft hyphen
    assert normalize("  Many \t  SPACES\n") == "many spaces"
    assert normalize("𝐧𝐮𝐝𝐞") == "nude"                             # mathematical bold letters


def test_blocklist_matches_whole_words_and_phrases_only():
    s = Safety(policy(blocklist=["gore", "hate symbol"], patterns=[]), None)
    refused = ["some gore here", "GORE!", "g\u200bore", "a hate symbol", "a hate-symbol", "a HATE   symbol"]
    allowed = ["Gorey Street", "gorgeous red circle", "a hateful symbolic star", "a red circle"]
    for p in refused:
        v = s.check_prompt_text(p)
        assert not v.allowed and v.policy == "prompt.blocklist" and "blocked term" in v.reason, p
    assert all(s.check_prompt_text(p).allowed for p in allowed)


def test_patterns_carry_their_reason():
    s = Safety(policy(blocklist=[], patterns=[{"pattern": r"\bsecret-\d+\b", "reason": "an internal code"}, r"x{3}"]), None)
    v = s.check_prompt_text("draw secret-42 please")
    assert (v.allowed, v.policy, v.reason) == (False, "prompt.pattern", "the prompt contains an internal code")
    assert "pattern" in s.check_prompt_text("xxx").reason
    assert s.check_prompt_text("secret-x").allowed
    default = Safety(policy(), None)       # the defaults refuse personal data
    assert default.check_prompt_text("mail a.b@example.org").policy == "prompt.pattern"
    assert default.check_prompt_text("card 4111 1111 1111 1111").policy == "prompt.pattern"
    with pytest.raises(ValueError, match=r"patterns\[0\]"):
        policy(patterns=["([unclosed"])


def test_prompt_concepts_in_clip_text_space(embedder):
    concepts = ["graphic violence and gore", "explicit sexual content"]
    s = Safety(policy(blocklist=[], patterns=[], prompt_concepts=concepts, prompt_threshold=0.92), embedder)
    prompts = ["explicit sexual content", "a red circle in the center", "two blue squares on a beige background"]
    sims = s.prompt_similarities(prompts)                  # (3 prompts, 2 concepts)
    assert sims.shape == (3, 2) and torch.allclose(sims[0, 1], torch.tensor(1.0), atol=1e-4)
    verdicts = s.check_prompts(prompts)
    assert not verdicts[0].allowed and verdicts[0].policy == "prompt.concept"
    assert "'explicit sexual content'" in verdicts[0].reason and verdicts[0].score > 0.99
    # the others are allowed exactly when their best similarity is below the threshold
    for v, row in zip(verdicts[1:], sims[1:]):
        assert v.allowed == bool(row.max() < 0.92) and v.score == pytest.approx(float(row.max()), abs=1e-5)
    # a threshold above 1 turns concept matching off; the exact checks still run first
    off = Safety(policy(blocklist=["gore"], patterns=[], prompt_concepts=concepts, prompt_threshold=1.01), embedder)
    assert off.check_prompts(["explicit sexual content"])[0].allowed
    assert off.check_prompts(["graphic violence and gore"])[0].policy == "prompt.blocklist"


def test_image_concepts_in_clip_image_space(embedder):
    rng = random.Random(0)
    images = [shapes.render(shapes.sample_scene(rng, 64)) for _ in range(6)]   # 64 px: resized to CLIP's 32
    s = Safety(policy(image_concepts=["graphic violence and gore", "hateful extremist symbols"]), embedder)
    best = s.image_similarities(images).max(dim=1).values                     # (6,)
    assert best.shape == (6,) and bool((best.abs() <= 1.0 + 1e-5).all())
    # a threshold between the images' scores flags exactly those at or above it
    cut = float(best.sort().values[3])
    s.image_threshold = cut
    verdicts = s.check_images(images)
    assert [not v.allowed for v in verdicts] == [bool(b >= cut) for b in best]
    flagged = [v for v in verdicts if not v.allowed]
    assert len(flagged) == 3 and all(v.policy == "image.concept" and "unsafe concept" in v.reason for v in flagged)
    s.image_threshold = 1.01
    assert all(v.allowed for v in s.check_images(images))
    assert Safety(policy(image_concepts=[]), embedder).check_images(images) == [s.check_images(images)[0]] * 6


def test_image_safety_reuses_given_embeddings(embedder):
    """Embeddings that came with the images (the generator's reranking, same CLIP) are used as
    they are: only the images without one are embedded again, and the verdicts are the same."""
    rng = random.Random(1)
    images = [shapes.render(shapes.sample_scene(rng, 32)) for _ in range(4)]
    s = Safety(policy(image_concepts=["graphic violence and gore"]), embedder)
    best = s.image_similarities(images).max(dim=1).values
    srt = best.sort().values
    s.image_threshold = float(srt[1] + srt[2]) / 2   # between two images: no tie for batch numerics to break
    emb = embedder.embed_images(images)                                        # (4, D)
    calls = []
    real = embedder.embed_images
    embedder.embed_images = lambda ims: calls.append(len(ims)) or real(ims)   # count, then embed for real
    try:
        reused = s.check_images(images, [emb[0], None, emb[2], emb[3]])
    finally:
        del embedder.embed_images
    assert calls == [1]                                                       # only the image without one
    again = s.check_images(images)
    assert [(v.allowed, v.policy) for v in reused] == [(v.allowed, v.policy) for v in again]
    assert [v.score for v in reused] == pytest.approx([v.score for v in again], abs=1e-5)
    # an embedding is what the verdict reads: a far-away vector is judged as such
    far = -s._image_emb[0]
    assert s.check_images(images[:1], [far / far.norm()])[0].allowed


def test_auto_thresholds_refuse_no_benign_reference(embedder):
    """'auto' (the default) calibrates on benign references: none of them is refused, whatever
    this CLIP's similarities look like, and a verbatim concept still is."""
    from model_code.serve.safety import AUTO_CAP, benign_images, benign_prompts
    s = Safety(policy(blocklist=[], patterns=[]), embedder)
    assert s.cfg["prompt_threshold"] == "auto" and s.cfg["image_threshold"] == "auto"
    assert -1.0 <= s.prompt_threshold <= AUTO_CAP and -1.0 <= s.image_threshold <= AUTO_CAP
    assert all(v.allowed for v in s.check_prompts(benign_prompts(n=20, seed=7)))   # not the calibration seed...
    assert all(v.allowed for v in s.check_prompts(benign_prompts()))               # ...and the calibration set
    assert all(v.allowed for v in s.check_images(benign_images()))
    assert not s.check_prompts(["self-harm"])[0].allowed
    # without a CLIP, "auto" leaves concept matching off
    assert Safety(policy(), None).prompt_threshold > 1.0
    with pytest.raises(ValueError, match="prompt_threshold"):
        policy(prompt_threshold="high")


def test_normalisation_undoes_marks_and_the_blocklist_takes_plurals():
    assert normalize("a nu\u0301de woman") == "a nude woman"                       # combining acute
    assert normalize("a n\u00fade woman") == "a nude woman"                         # precomposed
    assert normalize("n\u0336u\u0336d\u0336e\u0336") == "nude"                     # strike-through
    assert normalize("n\u034fude\ufe0f") == "nude"                                  # grapheme joiner, selector
    s = Safety(policy(patterns=[]), None)
    for p in ["a nudes party", "swastikas", "a nu\u0301de woman", "n\u0336u\u0336d\u0336e\u0336", "GORES"]:
        assert s.check_prompt_text(p).policy == "prompt.blocklist", p
    assert all(s.check_prompt_text(p).allowed for p in ["nudest", "a gorey street", "nudeness"])


def test_personal_data_patterns_dotted_cards_and_a_linear_email_check():
    import time
    s = Safety(policy(), None)
    assert s.check_prompt_text("card 4111.1111.1111.1111").policy == "prompt.pattern"
    for mail in ["jane.doe@example.com", "a+b@mail-server.example.org", "x" * 100 + "@example.com"]:
        assert s.check_prompt_text(f"send it to {mail} please").policy == "prompt.pattern", mail
    assert s.check_prompt_text("a red circle @ the top").allowed
    for mail in ["jane (at) example (dot) com", "jane[at]example.com", "Jane {AT} mail-host [DOT] org"]:
        assert s.check_prompt_text(f"write to {mail}").policy == "prompt.pattern", mail
    assert s.check_prompt_text("a cat (at) the top of a tree").allowed  # no domain after it
    # a long run with no domain after it: an unbounded pattern retries it from every start (quadratic)
    t = time.perf_counter()
    for text in ("a" * 40_000 + "@", "a@" * 20_000, "a" * 40_000 + "@b"):
        assert s.check_prompt_text(text).allowed
    assert time.perf_counter() - t < 1.0


def test_prompt_concepts_read_the_normalised_text(embedder):
    s = Safety(policy(blocklist=[], patterns=[], prompt_concepts=["explicit sexual content"], prompt_threshold=0.999),
               embedder)
    for p in ["explicit sexual content", "explicit  sexual   content", "EXPLICIT sexual content", "ｅｘｐｌｉｃｉｔ sexual content"]:
        v = s.check_prompts([p])[0]
        assert not v.allowed and v.policy == "prompt.concept", p


def test_calibration_without_a_margin_turns_concept_matching_off():
    from model_code.serve.safety import OFF, _calibrated
    t, why = _calibrated(torch.tensor([[0.2, 0.9996], [0.5, 0.1]]), 0.02, "prompt")
    assert t == OFF and "similarity 1.000" in why and "margin" in why
    t, why = _calibrated(torch.tensor([[0.2, 0.5]]), 0.02, "image", separation=torch.tensor([0.3, 0.01]))
    assert t == OFF and "own caption" in why
    t, why = _calibrated(torch.tensor([[0.2, 0.5]]), 0.02, "image", separation=torch.tensor([0.3, 0.05]))
    assert (t, why) == (pytest.approx(0.52), "")


def test_a_clip_that_cannot_separate_refuses_no_benign_reference(embedder):
    """A concept that is itself a benign reference leaves no margin: CLIP matching is off (and
    said so), every benign reference passes, and a prompt that names a concept is still refused."""
    from model_code.serve.safety import benign_images, benign_prompts, benign_renders
    caption = benign_renders()[0][1]          # a benign render's own caption as an "unsafe" image concept
    s = Safety(policy(blocklist=[], patterns=[], prompt_concepts=["a city street", "self-harm"],
                      image_concepts=[caption]), embedder)
    assert s.prompt_threshold > 1.0 and s.image_threshold > 1.0
    assert set(s.disabled) == {"prompt.concept", "image.concept"} and "prompt.concept off" in s.status
    allowed = [p for p in benign_prompts() + ["hello world", "a cat"] if "city street" not in p]
    assert all(v.allowed for v in s.check_prompts(allowed))
    assert all(v.allowed for v in s.check_images(benign_images()))
    for p in ["self-harm", "a picture of SELF HARM"]:
        v = s.check_prompts([p])[0]
        assert not v.allowed and v.policy == "prompt.concept" and "'self-harm'" in v.reason, p


def test_look_alike_letters_and_spelled_out_words_are_read_as_words():
    """Left open by the first fix: Cyrillic look-alikes ("nudе" with a Cyrillic е, "ѕех") and a
    word spelled out letter by letter. A Russian or Greek word is left as it is."""
    assert normalize("a nud\u0435 woman") == "a nude woman" and normalize("\u0455\u0435\u0445") == "sex"
    assert normalize("n u d e") == normalize("n.u.d.e") == normalize("n-u-d-e") == "nude"
    assert normalize("ελληνικά γράμματα") == "ελληνικα γραμματα"
    assert normalize("a b red circle") == "a b red circle"          # two single letters are no word
    s = Safety(policy(blocklist=["nude", "sex"]), None)
    for p in ("a nud\u0435 woman", "\u0455\u0435\u0445", "a n u d e party", "n.u.d.e", "s-e-x tape",
              "card 4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1"):
        assert not s.check_prompt_text(p).allowed, p
    for p in ("красный круг", "a red circle", "x y z axes in a b c order"):
        assert s.check_prompt_text(p).allowed, p
