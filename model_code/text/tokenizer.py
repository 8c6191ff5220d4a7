"""Byte-level BPE text tokenizer (DALL-E 1: captions are lowercased and BPE-encoded).

Built on the `tokenizers` library and trained on the project's own captions (nothing comes from a
hub). Every encoded caption has a fixed length ``max_len`` (DALL-E 1: 256 text positions):

    [<bos>, (<short>|<long>)?, t_1 ... t_n, <eos>, <pad>, <pad>, ...]     ids  (B, max_len)
    [ True,  True,              True ... True, True, False, False, ...]    mask (B, max_len)

Captions longer than ``max_len`` are truncated (the content is cut, ``<eos>`` is always kept so a
model knows where the text ends). ``<short>`` / ``<long>`` are caption-kind prefix tokens used by
the captioner (DALL-E 3 recaptioning): pass ``prefix="<short>"`` or start the text with the token.

On disk (a directory or any URI model_code.storage understands):
    tokenizer.json          the `tokenizers` pipeline (normalizer, BPE model, decoder)
    easel_tokenizer.json    {"format", "max_len", "lowercase", "special_tokens", "vocab_size"}
"""
from __future__ import annotations

import json
from typing import Iterable, Iterator, Sequence

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from model_code import storage

FORMAT = "easel-bpe-v1"
PAD, BOS, EOS, UNK, SHORT, LONG = "<pad>", "<bos>", "<eos>", "<unk>", "<short>", "<long>"
# Order fixes the ids: <pad>=0, <bos>=1, <eos>=2, <unk>=3, <short>=4, <long>=5.
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK, SHORT, LONG)
CAPTION_KINDS = (SHORT, LONG)
_N_BYTES = 256  # the byte-level alphabet is always in the vocabulary


def _check_texts(texts: Iterable[str]) -> Iterator[str]:
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"texts[{i}] must be a str, got {type(t).__name__}")
        yield t


class TextTokenizer:
    """Lowercasing byte-level BPE with fixed-length, padded encodings (see the module docstring)."""

    def __init__(self, tokenizer: Tokenizer, max_len: int):
        if max_len < 3:
            raise ValueError(f"max_len must be >= 3 (<bos>, one token, <eos>), got {max_len}")
        self._tok = tokenizer
        self.max_len = int(max_len)
        ids = {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"tokenizer lacks the special tokens {missing}")
        self._special_ids = ids

    # ---------------------------------------------------------------- training / io
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, max_len: int) -> "TextTokenizer":
        """Train a BPE on `texts` (deterministic for the same texts in the same order).

        The vocabulary may come out smaller than `vocab_size` when the corpus has fewer distinct
        merges; `self.vocab_size` is the true size.
        """
        min_vocab = _N_BYTES + len(SPECIAL_TOKENS) + 1
        if vocab_size < min_vocab:
            raise ValueError(f"vocab_size must be >= {min_vocab} (256 bytes + {len(SPECIAL_TOKENS)} "
                             f"special tokens + 1 merge), got {vocab_size}")
        tok = Tokenizer(models.BPE(unk_token=UNK))
        # DALL-E lowercases captions before BPE; NFC first so accented letters have one spelling.
        tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
        # add_prefix_space: a word is the same token at the start and in the middle of a caption.
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=int(vocab_size), min_frequency=2, show_progress=False,
            special_tokens=list(SPECIAL_TOKENS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        seen = [0]

        def counted() -> Iterator[str]:
            for t in _check_texts(texts):
                seen[0] += 1
                yield t

        tok.train_from_iterator(counted(), trainer=trainer)
        if seen[0] == 0:
            raise ValueError("texts is empty: a tokenizer needs captions to train on")
        return cls(tok, max_len)

    def save(self, dir_or_uri: str) -> None:
        storage.makedirs(dir_or_uri)
        storage.write_text(storage.join(dir_or_uri, "tokenizer.json"), self._tok.to_str())
        meta = {"format": FORMAT, "max_len": self.max_len, "lowercase": True,
                "special_tokens": dict(self._special_ids), "vocab_size": self.vocab_size}
        storage.write_text(storage.join(dir_or_uri, "easel_tokenizer.json"), json.dumps(meta, indent=2))

    @classmethod
    def load(cls, dir_or_uri: str) -> "TextTokenizer":
        meta = json.loads(storage.read_text(storage.join(dir_or_uri, "easel_tokenizer.json")))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{dir_or_uri}: easel_tokenizer.json has format {meta.get('format')!r}, "
                             f"expected {FORMAT!r}")
        tok = Tokenizer.from_str(storage.read_text(storage.join(dir_or_uri, "tokenizer.json")))
        return cls(tok, meta["max_len"])

    # ---------------------------------------------------------------- vocabulary
    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def pad_id(self) -> int:
        return self._special_ids[PAD]

    @property
    def bos_id(self) -> int:
        return self._special_ids[BOS]

    @property
    def eos_id(self) -> int:
        return self._special_ids[EOS]

    @property
    def unk_id(self) -> int:
        return self._special_ids[UNK]

    @property
    def special_ids(self) -> dict[str, int]:
        return dict(self._special_ids)

    def token_id(self, tok: str) -> int:
        """Id of a token string, e.g. token_id("<short>"); ValueError if it is not in the vocabulary."""
        i = self._tok.token_to_id(tok)
        if i is None:
            raise ValueError(f"token {tok!r} is not in the vocabulary")
        return i

    # ---------------------------------------------------------------- encoding
    def count_tokens(self, text: str) -> int:
        """Number of BPE tokens of `text` (lowercased), without <bos>/<eos> and without truncation."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        return len(self._tok.encode(text, add_special_tokens=False).ids)

    def encode(self, text: str, max_len: int | None = None, prefix: str | None = None) -> list[int]:
        """One caption -> its ids (with <bos>/<eos>, truncated, not padded)."""
        ids, mask = self.encode_batch([text], max_len=max_len, prefix=prefix)
        return ids[0, mask[0]].tolist()

    def encode_batch(self, texts: Sequence[str], max_len: int | None = None,
                     prefix: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> (ids LongTensor (B, L), mask BoolTensor (B, L)), L = max_len or self.max_len.

        mask is True on real tokens (<bos>, prefix, text, <eos>) and False on <pad>.
        prefix: None, "<short>" or "<long>" (the caption kind, inserted after <bos>).
        """
        L = self.max_len if max_len is None else int(max_len)
        head = [self.bos_id]
        if prefix is not None:
            if prefix not in CAPTION_KINDS:
                raise ValueError(f"prefix must be one of {CAPTION_KINDS} or None, got {prefix!r}")
            head.append(self._special_ids[prefix])
        if L < len(head) + 1:
            raise ValueError(f"max_len={L} leaves no room for <bos>, the prefix and <eos>")
        texts = list(_check_texts(texts))
        ids = torch.full((len(texts), L), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(texts), L), dtype=torch.bool)
        room = L - len(head) - 1  # content tokens that fit between the head and <eos>
        for b, enc in enumerate(self._tok.encode_batch(texts, add_special_tokens=False)):
            row = head + enc.ids[:room] + [self.eos_id]
            ids[b, :len(row)] = torch.tensor(row, dtype=torch.long)
            mask[b, :len(row)] = True
        return ids, mask

    # ---------------------------------------------------------------- decoding
    def decode(self, ids) -> str:
        """Ids (list or 1-D tensor) -> text. Stops at the first <eos>; special tokens are dropped."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(f"decode takes one sequence (1-D), got shape {tuple(ids.shape)}; "
                                 f"use decode_batch")
            ids = ids.tolist()
        ids = [int(i) for i in ids]
        if self.eos_id in ids:
            ids = ids[:ids.index(self.eos_id)]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})")
        return self._tok.decode(ids, skip_special_tokens=True).strip()

    def decode_batch(self, ids) -> list[str]:
        """(B, L) ids -> B texts."""
        return [self.decode(row) for row in ids]

    def __repr__(self) -> str:
        return f"TextTokenizer(vocab_size={self.vocab_size}, max_len={self.max_len})"
