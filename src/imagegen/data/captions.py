"""Captions of a dataset: a word-level vocabulary and fixed-length token ids, built at ingest (numpy only).

A caption is lowercased and split into words (runs of letters and digits: "T-shirt/top" is "t shirt top").
The vocabulary is ``<pad>`` (id 0), ``<unk>`` (id 1), then every word of the training captions, sorted, so
the same captions always give the same ids. Token ids are padded with 0 (or cut) to ``max_length``; the
all-pad sequence is the *null caption* that caption dropout trains and classifier-free guidance contrasts
with. The text encoder (:mod:`imagegen.models.text`) uses this tokenizer; it lives here so that ingest and
the data loader never import Keras.

Sources of captions: a ``captions.csv`` in a ``folder`` dataset (:mod:`imagegen.data.sources.folder`), or,
for labelled datasets, ``data.caption_template`` with ``{class}`` replaced by each class name.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """The words of a caption: lowercase runs of letters and digits."""
    return _WORD.findall(text.lower())


def build_vocabulary(texts: Iterable[str]) -> list[str]:
    """``[<pad>, <unk>, *sorted words of texts]``."""
    return [PAD, UNK, *sorted({w for text in texts for w in words(text)})]


@dataclass(frozen=True)
class Tokenizer:
    """Words -> ids over a fixed vocabulary; unknown words map to ``<unk>``."""

    vocabulary: Sequence[str]
    max_length: int

    def __post_init__(self) -> None:
        if list(self.vocabulary[:2]) != [PAD, UNK]:
            raise ValueError(f"a vocabulary starts with {PAD!r}, {UNK!r}; got {list(self.vocabulary[:2])}")
        if self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")

    @property
    def index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.vocabulary)}

    def encode(self, texts: Sequence[str], warn_unknown: bool = False) -> np.ndarray:
        """int32 (len(texts), max_length) ids. With ``warn_unknown`` one warning lists the unknown words."""
        index = self.index
        out = np.full((len(texts), self.max_length), PAD_ID, dtype=np.int32)
        unknown: list[str] = []
        for row, text in enumerate(texts):
            ids = []
            for w in words(text)[: self.max_length]:
                if w not in index:
                    unknown.append(w)
                ids.append(index.get(w, UNK_ID))
            out[row, : len(ids)] = ids
        if warn_unknown and unknown:
            known = ", ".join(self.vocabulary[2:12]) + (", ..." if len(self.vocabulary) > 12 else "")
            warnings.warn(
                f"caption words not in the model's vocabulary, read as {UNK}: {', '.join(sorted(set(unknown)))} "
                f"(it knows {len(self.vocabulary) - 2} words: {known})",
                stacklevel=2,
            )
        return out

    def decode(self, ids: np.ndarray) -> list[str]:
        """Token ids back to space-joined words (padding dropped)."""
        return [" ".join(self.vocabulary[i] for i in row if i != PAD_ID) for row in np.asarray(ids)]


@dataclass
class Captions:
    """The captions of a dataset as stored with it: the vocabulary and each split's token ids (N, max_length)."""

    vocabulary: list[str]
    max_length: int
    tokens: dict[str, np.ndarray]
    source: str
    class_captions: list[str] | None = None  # the caption of each class (template captions only)

    def manifest(self) -> dict[str, object]:
        record: dict[str, object] = {"source": self.source, "max_length": self.max_length}
        if self.class_captions is not None:
            record["class_captions"] = self.class_captions
        record["vocabulary"] = self.vocabulary
        return record


def class_captions(template: str, class_names: Sequence[str]) -> list[str]:
    """``template`` with ``{class}`` replaced by each class name (lowercased)."""
    return [template.replace("{class}", name.lower()) for name in class_names]


def captions_from_texts(texts: dict[str, Sequence[str]], max_length: int, source: str) -> Captions:
    """Tokenize each split's captions over the vocabulary of the training split's captions."""
    tokenizer = Tokenizer(build_vocabulary(texts["train"]), max_length)
    tokens = {name: tokenizer.encode(list(split_texts)) for name, split_texts in texts.items()}
    return Captions(list(tokenizer.vocabulary), max_length, tokens, source)


def template_captions(
    template: str, class_names: Sequence[str], labels: dict[str, np.ndarray], max_length: int
) -> Captions:
    """One caption per class from ``template``; every image gets its class's caption."""
    per_class = class_captions(template, class_names)
    tokenizer = Tokenizer(build_vocabulary(per_class), max_length)
    table = tokenizer.encode(per_class)
    tokens = {name: table[np.asarray(y, dtype=np.int64)] for name, y in labels.items()}
    return Captions(list(tokenizer.vocabulary), max_length, tokens, f"template {template!r}", per_class)
