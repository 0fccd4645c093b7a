"""The held-out split: a document is held out when a hash of its text falls below the run's ``heldout``
fraction, so the split needs no file, is the same for every seed, tokenizer and objective, and a document's
side never depends on the other documents. The trainer lays out only the training side;
:mod:`lmobjectives.evaluation` evaluates on the held-out side.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from .._checks import check_probability
from .sources import is_document

__all__ = ["HELDOUT_SALT", "document_key", "heldout_split", "is_heldout"]

HELDOUT_SALT = "lmobjectives-heldout-v1"  # mixed into the split's hash; change it only to draw a new split


def document_key(item: Any) -> str:
    """The text a document is known by in the held-out split: its words joined by single spaces (so a
    different sentence segmentation or whitespace of the same text gives the same key); a chat record
    (not a list of sentences): its JSON with sorted keys.

    >>> document_key(["Two  sentences.", "Here."]) == document_key(["Two sentences. Here."])
    True
    """
    if is_document(item):
        return " ".join(" ".join(item).split())
    return json.dumps(item, sort_keys=True, ensure_ascii=False)


def is_heldout(item: Any, fraction: float) -> bool:
    """Whether the held-out split of ``fraction`` holds ``item`` out: the first 8 bytes of
    ``sha256(HELDOUT_SALT + "\\0" + document_key(item))``, as a number in ``[0, 1)``, are below ``fraction``.

    >>> is_heldout(["Any text."], 0.0), is_heldout(["Any text."], 1.0)
    (False, True)
    """
    digest = hashlib.sha256(f"{HELDOUT_SALT}\0{document_key(item)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < fraction


def heldout_split(data: Sequence[Any], fraction: float) -> tuple[list[Any], list[Any]]:
    """``(training, held_out)``: the items of :func:`load_data`'s result on each side of the split, each in
    corpus order. A document is held out iff :func:`is_heldout`; identical documents fall on the same side.
    The held-out share is ``fraction`` in expectation (the built-in corpus, 205 documents, at 0.05: see the
    tests), not exactly.

    >>> train, held = heldout_split([["a b."], ["c d."], ["e f."]], 0.0)
    >>> len(train), held
    (3, [])
    """
    check_probability(fraction, "heldout", high_open=True)
    flags = [fraction > 0 and is_heldout(item, fraction) for item in data]
    training = [item for item, held in zip(data, flags) if not held]
    held_out = [item for item, held in zip(data, flags) if held]
    if data and not training:
        raise ValueError(f"heldout={fraction!r} holds out every one of the {len(data)} documents; lower it")
    return training, held_out
