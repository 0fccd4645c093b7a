"""Synthetic corpora with known statistics, built from a seed: nothing is downloaded.

- :class:`MarkovSource` (``synthetic:markov``, ``synthetic:topics``): sentences are walks of a word-level
  Markov chain that starts at a sentence start and stops at a sentence end; a document is one topic's chain
  run for a uniform number of sentences. Its entropy is computed exactly (:meth:`MarkovSource.entropy`), so
  a causal LM's loss can be set against its floor. With several topics, each topic walks its own words, so
  a sentence's topic can be read from its words (NSP's "topic shortcut": a random B from another document
  gives itself away by topic alone).
- :class:`ICLSequences` (``synthetic:icl``): in-context learning sequences ``"t7 f1 t7 t7 f1 ..."``; each
  defines its own key -> value mapping and repeats keys (see :mod:`lmobjectives.evaluation.icl` for the probe).

:func:`synthetic_corpus` reads the spec strings that :func:`lmobjectives.data.load_corpus` (``--data``)
accepts; :data:`SPEC_DEFAULTS` lists every parameter with its default.

Determinism: every draw is ``random.Random(s).random()`` with ``s`` a SHA-256 of the seed and the purpose.
Python guarantees that ``random()`` gives the same sequence for the same seed in every version (it does not
guarantee ``choice``, ``sample`` or ``gammavariate``, which are therefore not used), so a spec names the same
corpus on every machine, independent of the torch version. Document ``i`` is drawn from its own stream, so
``docs=500`` starts with the 200 documents of ``docs=200``.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import math
import random
from dataclasses import dataclass

import torch

from .._checks import check_int
from .corpus import Document

__all__ = [
    "KEY_SYMBOLS",
    "SPEC_DEFAULTS",
    "VALUE_SYMBOLS",
    "ICLSequences",
    "MarkovSource",
    "SampledCorpus",
    "SourceEntropy",
    "icl_sequences",
    "markov_source",
    "parse_spec",
    "synthetic_corpus",
]

SPEC_PREFIX = "synthetic:"

SPEC_DEFAULTS: dict[str, dict[str, int]] = {
    # one topic: a single word-level Markov chain over 64 words
    "markov": {
        "docs": 256,
        "seed": 0,
        "topics": 1,
        "words": 64,
        "topic_words": 64,
        "branching": 4,
        "length": 8,
        "min_sentences": 4,
        "max_sentences": 12,
    },
    # eight topics, each walking its own 32 of 256 words (subsets drawn at random, so they overlap a little)
    "topics": {
        "docs": 256,
        "seed": 0,
        "topics": 8,
        "words": 256,
        "topic_words": 32,
        "branching": 4,
        "length": 8,
        "min_sentences": 4,
        "max_sentences": 12,
    },
    # in-context learning: 32 key-value pairs per sequence over 8 of the 26 keys, 10 possible values
    "icl": {"docs": 4096, "seed": 0, "pairs": 32, "keys": 8, "values": 10},
}
"""Parameters of each ``synthetic:KIND`` spec and their defaults (all integers).

markov / topics: ``docs`` documents; ``topics`` K chains, a document's topic uniform among them; ``words``
in the whole vocabulary; ``topic_words`` that each topic uses (a random subset); ``branching`` successors
per word; ``length`` mean words per sentence (the sentence ends after each word with probability
1/length); sentences per document uniform on ``[min_sentences, max_sentences]``.
icl: ``docs`` sequences of ``pairs`` key-value pairs; ``keys`` distinct keys per sequence (of 26);
``values`` possible values (of 36). ``seed`` everywhere.
"""

KEY_SYMBOLS = "abcdefghijklmnopqrstuvwxyz"
"""Keys of the ICL sequences (one byte each)."""

VALUE_SYMBOLS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
"""Values of the ICL sequences (one byte each): ``values=10`` uses the digits."""

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def _rng(seed: int, *purpose: object) -> random.Random:
    """A ``random.Random`` seeded from a SHA-256 of ``seed`` and ``purpose``."""
    text = ":".join(str(p) for p in (seed, *purpose))
    return random.Random(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little"))


def _below(rng: random.Random, n: int) -> int:
    """A uniform int in ``[0, n)`` from ``rng.random()`` alone."""
    return min(int(rng.random() * n), n - 1)


def _permutation(rng: random.Random, n: int) -> list[int]:
    """A uniform permutation of ``range(n)`` (Fisher-Yates on ``rng.random()``)."""
    order = list(range(n))
    for i in range(n - 1, 0, -1):
        j = _below(rng, i + 1)
        order[i], order[j] = order[j], order[i]
    return order


def _dirichlet_ones(rng: random.Random, n: int) -> list[float]:
    """A draw of Dirichlet(1, ..., 1): normalised standard exponentials."""
    e = [-math.log(1.0 - rng.random()) for _ in range(n)]
    total = sum(e)
    return [x / total for x in e]


# --------------------------------------------------------------------------- spec strings


def parse_spec(spec: str) -> tuple[str, dict[str, int]]:
    """``"synthetic:KIND?key=value&key=value"`` -> ``(KIND, parameters with defaults filled in)``.

    >>> parse_spec("synthetic:markov?docs=500&seed=3")[1]["docs"]
    500
    >>> parse_spec("synthetic:icl")
    ('icl', {'docs': 4096, 'seed': 0, 'pairs': 32, 'keys': 8, 'values': 10})
    """
    if not isinstance(spec, str) or not spec.startswith(SPEC_PREFIX):
        raise ValueError(f"synthetic spec must start with {SPEC_PREFIX!r}, got {spec!r}")
    kind, _, query = spec[len(SPEC_PREFIX) :].partition("?")
    if kind not in SPEC_DEFAULTS:
        raise ValueError(f"unknown synthetic corpus {kind!r} in {spec!r}; choose one of: {', '.join(SPEC_DEFAULTS)}")
    params = dict(SPEC_DEFAULTS[kind])
    for item in query.split("&") if query else []:
        key, eq, value = item.partition("=")
        if key not in params:
            raise ValueError(
                f"unknown parameter {key!r} in {spec!r}; synthetic:{kind} takes: {', '.join(SPEC_DEFAULTS[kind])}"
            )
        if not eq or not value.strip().lstrip("-").isdigit():
            raise ValueError(f"parameter {key!r} in {spec!r} must be an integer, got {value!r}")
        params[key] = int(value)
    return kind, params


def synthetic_corpus(spec: str) -> list[Document]:
    """The documents a ``synthetic:...`` spec names (see :data:`SPEC_DEFAULTS` and ``load_corpus``).

    >>> docs = synthetic_corpus("synthetic:markov?docs=2&min_sentences=2&max_sentences=2")
    >>> len(docs), [len(d) for d in docs]
    (2, [2, 2])
    >>> synthetic_corpus("synthetic:icl?docs=1&pairs=5&keys=2")
    [['t7 f1 t7 t7 f1']]
    """
    kind, p = parse_spec(spec)
    check_int(p["docs"], "docs", low=1)
    if kind == "icl":
        return icl_sequences(
            p["docs"], pairs=p["pairs"], keys=p["keys"], values=p["values"], seed=p["seed"]
        ).documents()
    source = markov_source(
        topics=p["topics"],
        words=p["words"],
        topic_words=p["topic_words"],
        branching=p["branching"],
        length=p["length"],
        min_sentences=p["min_sentences"],
        max_sentences=p["max_sentences"],
        seed=p["seed"],
    )
    return source.sample(p["docs"], seed=p["seed"]).documents


# --------------------------------------------------------------------------- Markov source


@dataclass(frozen=True)
class SourceEntropy:
    """Exact entropy of a :class:`MarkovSource`, in nats (natural log). Per-topic fields hold one value per topic.

    A *token* is a byte-tokenizer token: one byte of the text (words are ASCII) or the EOS that closes a
    document when documents are packed (``data.packing.pack_documents``). A document's text is its
    sentences joined by one space, each sentence its words joined by spaces, the first capitalised, then
    ``"."``. The text is a one-to-one function of the word sequence, so it carries exactly the words'
    entropy.
    """

    nats_per_sentence: tuple[float, ...]  # per topic: H(sentence | topic)
    words_per_sentence: tuple[float, ...]  # per topic: expected words in a sentence
    tokens_per_sentence: tuple[
        float, ...
    ]  # per topic: expected bytes of a sentence plus the one that follows it (space or EOS)
    nats_per_word: tuple[float, ...]  # per topic: H(sentence | topic) / words per sentence (the end decision included)
    nats_per_byte: tuple[
        float, ...
    ]  # per topic: entropy rate of an endless document (sentences joined by spaces), per byte
    document_nats: tuple[float, float]  # (low, high) bounds on H(document); low = H(doc | topic), high = low + log K
    document_tokens: float  # expected tokens of a document, its EOS included
    nats_per_token: tuple[
        float, float
    ]  # (low, high) floor of a CLM's mean loss over a packed stream: document_nats / document_tokens

    @property
    def exact(self) -> bool:
        """True when the bounds coincide (one topic): the floor is exact."""
        return self.nats_per_token[0] == self.nats_per_token[1]


@dataclass
class SampledCorpus:
    """Documents drawn from a :class:`MarkovSource`, with the topic each was drawn from."""

    documents: list[Document]  # sentences of each document
    topics: list[int]  # topic of each document, in [0, K)


@dataclass(frozen=True, eq=False)
class MarkovSource:
    """K word-level Markov chains ("topics") over one vocabulary; a sentence is a walk, a document one topic's walks.

    A document draws its topic ``k`` uniformly from the K topics and its number of sentences ``N``
    uniformly from ``[min_sentences, max_sentences]``, independently. Each sentence, independently given
    ``k``: the first word from ``start[k]``, then after word ``i`` the next word ``j`` with probability
    ``transitions[k, i, j]`` or the end of the sentence with probability ``transitions[k, i, W]``.

    Entropy (:meth:`entropy`): with ``Q = transitions[k, :, :W]`` the expected number of visits of each
    word in a sentence is ``v = start[k] (I - Q)^-1`` (the absorbing chain's fundamental matrix), so
    ``H(sentence | k) = H(start[k]) + sum_i v_i H(transitions[k, i])`` exactly. ``H(document | k) =
    H(N) + E[N] H(sentence | k)`` (``N`` is readable from the text, and given ``N`` the sentences are
    independent). Over topics, ``H(doc | topic) <= H(doc) <= H(doc | topic) + log K``; the upper bound
    is nearly exact when topics are recognisable (``H(topic | doc)`` small), and both are equal for K = 1.

    Worked example: one topic, words ``("ab", "cde")``; a sentence starts with "ab"; after "ab" comes
    "cde" (1/2) or the end (1/2); after "cde" the end. Sentences: "Ab." (p 1/2) and "Ab cde." (p 1/2), so
    H(sentence) = log 2 = 0.6931 nats; tokens per sentence with its separator: (4 + 8) / 2 = 6.

    >>> src = MarkovSource(("ab", "cde"), torch.tensor([[1.0, 0.0]], dtype=torch.float64),
    ...                    torch.tensor([[[0.0, 0.5, 0.5], [0.0, 0.0, 1.0]]], dtype=torch.float64),
    ...                    min_sentences=1, max_sentences=1)
    >>> h = src.entropy()
    >>> round(h.nats_per_sentence[0], 4), h.tokens_per_sentence[0], round(h.nats_per_token[0], 4)
    (0.6931, 6.0, 0.1155)
    """

    words: tuple[str, ...]  # spelling of each word: distinct, non-empty, lower-case ASCII letters
    start: torch.Tensor  # (K, W) float64: P(first word of a sentence | topic)
    transitions: torch.Tensor  # (K, W, W + 1) float64: P(next word | word, topic); last column: the sentence ends
    min_sentences: int = 4  # fewest sentences in a document
    max_sentences: int = 12  # most sentences in a document (the number is uniform in between)

    def __post_init__(self) -> None:
        words = self.words
        if not isinstance(words, tuple) or not words or len(set(words)) != len(words):
            raise ValueError(f"MarkovSource: words must be a non-empty tuple of distinct strings, got {words!r}")
        if any(not isinstance(w, str) or not w or not (w.isascii() and w.isalpha() and w.islower()) for w in words):
            raise ValueError(f"MarkovSource: words must be lower-case ASCII letters, got {words!r}")
        W = len(words)
        for name, value, shape in (("start", self.start, (W,)), ("transitions", self.transitions, (W, W + 1))):
            if not isinstance(value, torch.Tensor) or value.dtype != torch.float64 or value.dim() != len(shape) + 1:
                raise ValueError(
                    f"MarkovSource: {name} must be a float64 tensor of shape (K, {', '.join(map(str, shape))})"
                )
            if tuple(value.shape[1:]) != shape or value.shape[0] != self.start.shape[0] or value.shape[0] == 0:
                raise ValueError(
                    f"MarkovSource: {name} has shape {tuple(value.shape)}, expected (K, {', '.join(map(str, shape))})"
                )
            if not bool(torch.isfinite(value).all()) or bool((value < 0).any()):
                raise ValueError(f"MarkovSource: {name} must hold finite non-negative probabilities")
            if not torch.allclose(value.sum(-1), torch.ones((), dtype=torch.float64), atol=1e-9):
                raise ValueError(
                    f"MarkovSource: every row of {name} must sum to 1, got sums {value.sum(-1).flatten()[:8].tolist()}"
                )
        check_int(self.min_sentences, "MarkovSource: min_sentences", low=1)
        check_int(self.max_sentences, "MarkovSource: max_sentences", low=self.min_sentences)
        self._visits()  # refuses chains whose sentences may never end

    @property
    def num_topics(self) -> int:
        return self.start.shape[0]

    def _visits(self) -> torch.Tensor:
        """Expected visits of each word in a sentence, ``(K, W)``: solves ``v (I - Q) = start`` per topic."""
        W = self.start.shape[1]
        eye = torch.eye(W, dtype=torch.float64)
        Q = self.transitions[:, :, :W]  # (K, W, W)
        try:
            v = torch.linalg.solve((eye - Q).transpose(1, 2), self.start.unsqueeze(-1)).squeeze(-1)  # (K, W)
        except RuntimeError:
            v = None
        if v is None or not bool(torch.isfinite(v).all()) or bool((v < -1e-9).any()):
            raise ValueError(
                "MarkovSource: some sentences never end (a set of words the chain cannot leave "
                "without an end-of-sentence probability)"
            )
        return v.clamp_min(0.0)

    def entropy(self) -> SourceEntropy:
        """The exact entropy of the source (see the class docstring and :class:`SourceEntropy`)."""
        K = self.num_topics
        v = self._visits()  # (K, W)
        h_start = -torch.xlogy(self.start, self.start).sum(-1)  # (K,)
        h_rows = -torch.xlogy(self.transitions, self.transitions).sum(-1)  # (K, W)
        h_sentence = h_start + (v * h_rows).sum(-1)  # (K,)
        n_words = v.sum(-1)  # (K,)
        letters = (v * torch.tensor([len(w) for w in self.words], dtype=torch.float64)).sum(-1)  # (K,)
        tokens = letters + n_words + 1  # (K,) letters, a space or "." after each word, then a space or EOS
        span = self.max_sentences - self.min_sentences + 1
        mean_n = (self.min_sentences + self.max_sentences) / 2
        doc_low = float((math.log(span) + mean_n * h_sentence).mean())  # topics are uniform
        doc_tokens = float((mean_n * tokens).mean())
        doc_high = doc_low + math.log(K)
        return SourceEntropy(
            nats_per_sentence=tuple(h_sentence.tolist()),
            words_per_sentence=tuple(n_words.tolist()),
            tokens_per_sentence=tuple(tokens.tolist()),
            nats_per_word=tuple((h_sentence / n_words).tolist()),
            nats_per_byte=tuple((h_sentence / tokens).tolist()),
            document_nats=(doc_low, doc_high),
            document_tokens=doc_tokens,
            nats_per_token=(doc_low / doc_tokens, doc_high / doc_tokens),
        )

    # ----------------------------------------------------------------------- sampling

    def _tables(self) -> tuple[list[tuple[list[int], list[float]]], list[list[tuple[list[int], list[float]]]]]:
        """Per topic: (ids, cumulative probabilities) of the start row and of each word's row (end = id W)."""

        def row(p: torch.Tensor) -> tuple[list[int], list[float]]:
            ids = p.nonzero().flatten()
            return ids.tolist(), p[ids].cumsum(0).tolist()

        return [row(s) for s in self.start], [[row(r) for r in t] for t in self.transitions]

    def sample(self, n: int, *, seed: int = 0) -> SampledCorpus:
        """``n`` documents; document ``i`` is drawn from its own stream seeded by ``(seed, i)``."""
        check_int(n, "MarkovSource.sample: n", low=0)
        starts, rows = self._tables()
        K, W = self.start.shape  # topics, words
        span = self.max_sentences - self.min_sentences + 1

        def draw(rng: random.Random, table: tuple[list[int], list[float]]) -> int:
            ids, cum = table
            return ids[min(bisect.bisect_right(cum, rng.random() * cum[-1]), len(ids) - 1)]

        documents, topics = [], []
        for i in range(n):
            rng = _rng(seed, "markov-doc", i)
            k = _below(rng, K)
            sentences = []
            for _ in range(self.min_sentences + _below(rng, span)):
                w = draw(rng, starts[k])
                sentence = [self.words[w]]
                while (w := draw(rng, rows[k][w])) != W:
                    sentence.append(self.words[w])
                sentences.append(" ".join(sentence).capitalize() + ".")
            documents.append(sentences)
            topics.append(k)
        return SampledCorpus(documents, topics)

    # ----------------------------------------------------------------------- likelihood

    @functools.cached_property
    def _log_tables(self) -> tuple[dict[str, int], torch.Tensor, torch.Tensor]:
        """Word -> index, ``log start`` (K, W) and ``log transitions`` (K, W, W + 1), computed once."""
        return {w: i for i, w in enumerate(self.words)}, self.start.log(), self.transitions.log()

    def topic_log_likelihoods(self, document: Document) -> torch.Tensor:
        """``log P(document | topic)`` in nats for each topic, ``(K,)`` float64 (``-inf`` where impossible)."""
        index, log_start, log_trans = self._log_tables  # (K, W), (K, W, W + 1)
        W = len(self.words)
        if not isinstance(document, list) or not all(isinstance(s, str) for s in document):
            raise TypeError(f"document must be a list of sentences (str), got {type(document).__name__}")
        n = len(document)
        if not self.min_sentences <= n <= self.max_sentences:
            return torch.full((self.num_topics,), -math.inf, dtype=torch.float64)
        total = torch.full(
            (self.num_topics,), -math.log(self.max_sentences - self.min_sentences + 1), dtype=torch.float64
        )
        for sentence in document:
            if not sentence.endswith(".") or sentence[:-1] != sentence[:-1].strip():
                raise ValueError(f"not a sentence of this source (no final '.'): {sentence!r}")
            try:
                ids = [index[w] for w in sentence[:-1].lower().split(" ")]
            except KeyError as e:
                raise ValueError(f"word {e.args[0]!r} of {sentence!r} is not in the source's vocabulary") from None
            total = total + log_start[:, ids[0]] + log_trans[:, ids, ids[1:] + [W]].sum(-1)
        return total

    def log_prob(self, document: Document) -> float:
        """``log P(document)`` in nats under the source (topics uniform): the Monte-Carlo estimate's summand."""
        ll = self.topic_log_likelihoods(document)
        return float(torch.logsumexp(ll, 0) - math.log(self.num_topics))


def _spellings(rng: random.Random, n: int) -> tuple[str, ...]:
    """``n`` distinct pronounceable words: 2-3 consonant-vowel syllables, sometimes a final consonant."""
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < n:
        syllables = 2 + _below(rng, 2)
        word = "".join(
            _CONSONANTS[_below(rng, len(_CONSONANTS))] + _VOWELS[_below(rng, len(_VOWELS))] for _ in range(syllables)
        )
        if rng.random() < 0.3:
            word += _CONSONANTS[_below(rng, len(_CONSONANTS))]
        if word not in seen:
            seen.add(word)
            words.append(word)
    return tuple(words)


def markov_source(
    *,
    topics: int = 1,
    words: int = 64,
    topic_words: int | None = None,
    branching: int = 4,
    length: int = 8,
    min_sentences: int = 4,
    max_sentences: int = 12,
    seed: int = 0,
) -> MarkovSource:
    """A seeded :class:`MarkovSource` (the ``synthetic:markov`` / ``synthetic:topics`` spec parameters).

    ``words`` pronounceable spellings (4 to 7 letters); each topic picks ``topic_words`` of them at random
    (default: all), a start distribution over them from Dirichlet(1), and for each of its words
    ``branching`` successors among its words (with replacement-free choice, itself allowed) with
    Dirichlet(1) weights times ``1 - 1/length``, and the end of the sentence with probability
    ``1/length``, so sentences have a geometric number of words with mean ``length``.

    >>> src = markov_source(words=8, branching=2, length=4, seed=1)
    >>> src.entropy().words_per_sentence
    (4.0,)
    """
    check_int(topics, "topics", low=1)
    check_int(words, "words", low=1)
    topic_words = words if topic_words is None else topic_words
    check_int(topic_words, "topic_words", low=1)
    if topic_words > words:
        raise ValueError(f"topic_words must be <= words ({words}), got {topic_words}")
    check_int(branching, "branching", low=1)
    if branching > topic_words:
        raise ValueError(f"branching must be <= topic_words ({topic_words}), got {branching}")
    check_int(length, "length", low=1)
    rng = _rng(seed, "markov-source")
    spellings = _spellings(rng, words)
    p_end = 1.0 / length
    start = torch.zeros(topics, words, dtype=torch.float64)
    transitions = torch.zeros(topics, words, words + 1, dtype=torch.float64)
    transitions[:, :, words] = 1.0  # words outside a topic: never reached; a valid row all the same
    for k in range(topics):
        own = _permutation(rng, words)[:topic_words]
        start[k, own] = torch.tensor(_dirichlet_ones(rng, topic_words), dtype=torch.float64)
        for w in own:
            successors = [own[j] for j in _permutation(rng, topic_words)[:branching]]
            transitions[k, w, words] = p_end
            transitions[k, w, successors] = (1.0 - p_end) * torch.tensor(
                _dirichlet_ones(rng, branching), dtype=torch.float64
            )
    start = start / start.sum(-1, keepdim=True)  # exact sums of 1 in float64
    transitions = transitions / transitions.sum(-1, keepdim=True)
    return MarkovSource(spellings, start, transitions, min_sentences=min_sentences, max_sentences=max_sentences)


# --------------------------------------------------------------------------- in-context learning sequences


@dataclass(frozen=True)
class ICLSequences:
    """In-context learning sequences: each pairs keys with values afresh and repeats its keys.

    Sequence ``i`` picks ``keys`` distinct keys of :data:`KEY_SYMBOLS`, gives each a value uniform over the
    first ``values`` symbols of :data:`VALUE_SYMBOLS` (two keys may share a value), then writes ``pairs``
    pairs, each key uniform among its keys, each followed by its value: the text ``"t7 f1 t7 t7 f1"`` (key,
    value, space, ...). A key that comes back always brings the value it had the first time, so that value
    is predictable from the left context only by looking the key up (an induction head); a first
    occurrence's value is not predictable at all (chance ``1 / values``).
    """

    keys: torch.Tensor  # (N, P) long, index in KEY_SYMBOLS of each pair's key
    values: torch.Tensor  # (N, P) long, index in VALUE_SYMBOLS of each pair's value

    @property
    def occurrence(self) -> torch.Tensor:
        """``(N, P)`` long: 1 where a pair's key appears for the first time in its sequence, 2 the second time, ..."""
        same = self.keys[:, :, None] == self.keys[:, None, :]  # (N, P, P): pair p has pair q's key
        P = self.keys.shape[1]
        earlier_or_self = torch.ones(P, P, dtype=torch.bool).tril()  # (P, P) q <= p
        return (same & earlier_or_self).sum(-1)  # (N, P)

    def texts(self) -> list[str]:
        """The text of each sequence: ``"k v k v ..."`` with one byte per key and per value."""
        return [
            " ".join(KEY_SYMBOLS[k] + VALUE_SYMBOLS[v] for k, v in zip(ks, vs))
            for ks, vs in zip(self.keys.tolist(), self.values.tolist())
        ]

    def documents(self) -> list[Document]:
        """One document per sequence, its text as the single sentence."""
        return [[t] for t in self.texts()]


def icl_sequences(n: int, *, pairs: int = 32, keys: int = 8, values: int = 10, seed: int = 0) -> ICLSequences:
    """``n`` seeded :class:`ICLSequences` (sequence ``i`` from its own stream seeded by ``(seed, i)``).

    >>> s = icl_sequences(1, pairs=5, keys=2, values=10, seed=0)
    >>> s.texts(), s.occurrence.tolist()
    (['t7 f1 t7 t7 f1'], [[1, 1, 2, 3, 2]])
    """
    check_int(n, "icl_sequences: n", low=0)
    check_int(pairs, "icl_sequences: pairs", low=1)
    check_int(keys, "icl_sequences: keys", low=1, high=len(KEY_SYMBOLS))
    check_int(values, "icl_sequences: values", low=1, high=len(VALUE_SYMBOLS))
    key_rows, value_rows = [], []
    for i in range(n):
        rng = _rng(seed, "icl", i)
        chosen = _permutation(rng, len(KEY_SYMBOLS))[:keys]
        mapping = [_below(rng, values) for _ in range(keys)]
        picks = [_below(rng, keys) for _ in range(pairs)]
        key_rows.append([chosen[j] for j in picks])
        value_rows.append([mapping[j] for j in picks])
    shape = (n, pairs)
    return ICLSequences(
        keys=torch.tensor(key_rows, dtype=torch.long).reshape(shape),
        values=torch.tensor(value_rows, dtype=torch.long).reshape(shape),
    )
