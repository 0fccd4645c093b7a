"""Synthetic corpora: exact entropy (enumeration, Monte Carlo), determinism, topics, ICL sequences, specs."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmobjectives.data import ByteTokenizer, load_corpus, pack_documents, split_sentences, tokenize_documents
from lmobjectives.data.synthetic import (
    KEY_SYMBOLS,
    SPEC_DEFAULTS,
    VALUE_SYMBOLS,
    MarkovSource,
    icl_sequences,
    markov_source,
    parse_spec,
    synthetic_corpus,
)

F64 = torch.float64


def tiny_source(min_sentences: int = 1, max_sentences: int = 1) -> MarkovSource:
    """The class docstring's example: "Ab." or "Ab cde.", each with probability 1/2."""
    start = torch.tensor([[1.0, 0.0]], dtype=F64)
    transitions = torch.tensor([[[0.0, 0.5, 0.5], [0.0, 0.0, 1.0]]], dtype=F64)
    return MarkovSource(("ab", "cde"), start, transitions, min_sentences=min_sentences, max_sentences=max_sentences)


def two_topic_source() -> MarkovSource:
    """Two topics over three words; topic 0 loops on "ab" (cyclic), topic 1 is acyclic; 1 or 2 sentences."""
    start = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.3, 0.7]], dtype=F64)
    transitions = torch.tensor(
        [
            [[0.2, 0.3, 0.0, 0.5], [0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]],
            [[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.0, 1.0]],
        ],
        dtype=F64,
    )
    return MarkovSource(("ab", "cde", "fghi"), start, transitions, min_sentences=1, max_sentences=2)


def enumerate_sentences(source: MarkovSource, topic: int, max_words: int) -> list[tuple[str, float]]:
    """Every sentence of at most ``max_words`` words with its probability, by brute force."""
    W = len(source.words)
    out = []
    frontier = [([w], float(source.start[topic, w])) for w in range(W) if source.start[topic, w] > 0]
    while frontier:
        path, p = frontier.pop()
        end = float(source.transitions[topic, path[-1], W])
        if end > 0:
            out.append((" ".join(source.words[i] for i in path).capitalize() + ".", p * end))
        if len(path) < max_words:
            for j in range(W):
                q = float(source.transitions[topic, path[-1], j])
                if q > 0:
                    frontier.append((path + [j], p * q))
    return out


# --------------------------------------------------------------------------- exact entropy


def test_worked_example_literal():
    h = tiny_source().entropy()
    assert h.nats_per_sentence == pytest.approx((math.log(2),), abs=1e-12)
    assert h.words_per_sentence == pytest.approx((1.5,), abs=1e-12)
    assert h.tokens_per_sentence == pytest.approx((6.0,), abs=1e-12)  # "Ab." + EOS, "Ab cde." + EOS
    assert h.nats_per_token[0] == h.nats_per_token[1] == pytest.approx(math.log(2) / 6, abs=1e-12)
    assert h.exact
    docs = tiny_source().sample(200, seed=0).documents
    assert Counter(d[0] for d in docs).keys() == {"Ab.", "Ab cde."}


def test_entropy_equals_enumeration_cyclic_and_acyclic():
    source = two_topic_source()
    h = source.entropy()
    for k in range(2):
        sentences = enumerate_sentences(
            source, k, max_words=25
        )  # topic 0 loops: the mass beyond 25 words is 0.5 * 0.2^24 < 1e-16
        mass = sum(p for _, p in sentences)
        assert mass == pytest.approx(1.0, abs=1e-10)
        assert h.nats_per_sentence[k] == pytest.approx(-sum(p * math.log(p) for _, p in sentences), abs=1e-9)
        assert h.words_per_sentence[k] == pytest.approx(sum(p * (s.count(" ") + 1) for s, p in sentences), abs=1e-9)
        assert h.tokens_per_sentence[k] == pytest.approx(sum(p * (len(s) + 1) for s, p in sentences), abs=1e-9)


def test_document_entropy_by_enumeration_lies_in_bounds():
    """H(document) over every document of a 2-topic source (1 or 2 sentences), exactly."""
    source = two_topic_source()
    h = source.entropy()
    sentences = [dict(enumerate_sentences(source, k, max_words=25)) for k in range(2)]
    support = sorted(set(sentences[0]) | set(sentences[1]))
    entropy = tokens = total = 0.0
    for n in (1, 2):
        for doc in itertools.product(support, repeat=n):
            p = sum(0.5 * 0.5 * math.prod(sentences[k].get(s, 0.0) for s in doc) for k in range(2))
            if p > 0:
                entropy -= p * math.log(p)
                tokens += p * (len(" ".join(doc)) + 1)
                total += p
                assert source.log_prob(list(doc)) == pytest.approx(math.log(p), abs=1e-9)
    assert total == pytest.approx(1.0, abs=1e-9)
    assert tokens == pytest.approx(h.document_tokens, abs=1e-8)
    low, high = h.document_nats
    assert low < entropy < high
    assert high - low == pytest.approx(math.log(2))


def test_monte_carlo_matches_exact_rate_per_byte_token():
    """-mean log p(doc) / mean tokens over sampled documents, tokens counted by the byte tokenizer + EOS."""
    source = markov_source(words=32, branching=3, length=6, min_sentences=2, max_sentences=6, seed=3)
    h = source.entropy()
    docs = source.sample(1000, seed=11).documents
    nll = torch.tensor([-source.log_prob(d) for d in docs], dtype=F64)
    tok = ByteTokenizer()
    ids, _ = tokenize_documents(docs, tok)
    packed = pack_documents(ids, 64, tok.vocab.eos_id, pad_id=tok.vocab.pad_id)
    n_tokens = int(packed.attention_mask.sum())
    lengths = torch.tensor([len(i) + 1 for i in ids], dtype=F64)
    assert n_tokens == int(lengths.sum())
    # ratio estimator: its standard error from the delta method
    ratio = float(nll.sum() / lengths.sum())
    resid = nll - ratio * lengths
    se = float(resid.std() / lengths.mean() / math.sqrt(len(docs)))
    assert abs(ratio - h.nats_per_token[0]) < 4 * se
    assert se < 0.01 * h.nats_per_token[0]  # the test has power
    assert abs(float(lengths.mean()) - h.document_tokens) < 4 * float(lengths.std()) / math.sqrt(len(docs))


def test_monte_carlo_with_topics_near_upper_bound():
    """Per topic, -log p(doc | topic) averages to H(doc | topic), the lower bound; with recognisable topics
    log p(doc | topic) - log p(doc) = log K - H(topic | doc) ~ log K, so H(doc) sits at the upper bound."""
    source = markov_source(topics=4, words=96, topic_words=24, branching=3, length=6, seed=5)
    h = source.entropy()
    sample = source.sample(400, seed=2)
    given_topic = torch.stack([source.topic_log_likelihoods(d)[k] for d, k in zip(sample.documents, sample.topics)])
    marginal = torch.tensor([source.log_prob(d) for d in sample.documents], dtype=F64)
    low, high = h.document_nats
    se = float(given_topic.std()) / math.sqrt(len(given_topic))
    assert abs(float(-given_topic.mean()) - low) < 4 * se
    information = given_topic - marginal  # (N,) summands of I(topic; doc) = log K - H(topic | doc)
    assert float(information.mean()) == pytest.approx(high - low, abs=1e-3)
    assert float(information.max()) <= math.log(4) + 1e-12


@settings(max_examples=25, deadline=None)
@given(
    words=st.integers(2, 20),
    branching=st.integers(1, 4),
    length=st.integers(1, 12),
    topics=st.integers(1, 3),
    seed=st.integers(0, 2**31),
)
def test_entropy_invariants(words, branching, length, topics, seed):
    branching = min(branching, words)
    source = markov_source(topics=topics, words=words, branching=branching, length=length, seed=seed)
    h = source.entropy()
    for k in range(topics):
        assert h.words_per_sentence[k] == pytest.approx(length, rel=1e-9)  # geometric length, mean `length`
        assert h.nats_per_sentence[k] <= math.log(words) + length * math.log(branching + 1) + 1e-9
        assert h.nats_per_byte[k] < h.nats_per_word[k]
    low, high = h.nats_per_token
    assert 0 < low <= high
    assert high - low == pytest.approx(math.log(topics) / h.document_tokens, abs=1e-12)


# --------------------------------------------------------------------------- documents, determinism, topics


def test_spec_is_deterministic_and_seeded():
    a = load_corpus("synthetic:markov?docs=40&seed=7")
    assert a == load_corpus("synthetic:markov?docs=40&seed=7")
    assert a != load_corpus("synthetic:markov?docs=40&seed=8")
    assert load_corpus("synthetic:markov?docs=80&seed=7")[:40] == a  # document i has its own stream
    assert load_corpus("synthetic:icl?docs=30&seed=1") == load_corpus("synthetic:icl?docs=30&seed=1")
    assert load_corpus("synthetic:icl?docs=30&seed=1") != load_corpus("synthetic:icl?docs=30&seed=2")


def test_documents_shape_and_text_round_trip():
    spec = "synthetic:topics?docs=60&min_sentences=2&max_sentences=5"
    docs = load_corpus(spec)
    assert len(docs) == 60
    assert {len(d) for d in docs} <= {2, 3, 4, 5}
    for d in docs:
        for s in d:
            assert s.endswith(".") and s[0].isupper() and s == " ".join(s.split())
        assert split_sentences(" ".join(d)) == d  # written to a .txt and read back: the same document


def test_topic_is_recoverable_from_word_statistics():
    """Naive Bayes on word counts, fitted on one sample, names the topic of single sentences of another."""
    _, p = parse_spec("synthetic:topics")
    params = {k: v for k, v in p.items() if k not in ("docs", "seed")}
    source = markov_source(**params, seed=0)
    train, test = source.sample(400, seed=1), source.sample(100, seed=2)
    K = p["topics"]
    counts = [Counter() for _ in range(K)]
    for doc, k in zip(train.documents, train.topics):
        counts[k].update(w for s in doc for w in s[:-1].lower().split())
    vocab = set().union(*counts)
    totals = [sum(c.values()) for c in counts]

    def classify(sentence: str) -> int:
        words = sentence[:-1].lower().split()
        scores = [sum(math.log((counts[k][w] + 0.1) / (totals[k] + 0.1 * len(vocab))) for w in words) for k in range(K)]
        return max(range(K), key=scores.__getitem__)

    pairs = [(s, k) for doc, k in zip(test.documents, test.topics) for s in doc]
    accuracy = sum(classify(s) == k for s, k in pairs) / len(pairs)
    assert accuracy > 0.95  # a random B sentence from another document gives its topic away
    assert len(set(test.topics)) == K


# --------------------------------------------------------------------------- ICL sequences


def test_icl_sequences_well_formed():
    seqs = icl_sequences(300, pairs=24, keys=6, values=10, seed=4)
    texts = seqs.texts()
    occurrence = seqs.occurrence
    for i, text in enumerate(texts):
        assert len(text) == 3 * 24 - 1
        pairs = text.split(" ")
        assert all(len(x) == 2 and x[0] in KEY_SYMBOLS and x[1] in VALUE_SYMBOLS[:10] for x in pairs)
        first: dict[str, str] = {}
        seen: Counter = Counter()
        for p, (key, value) in enumerate(pairs):
            seen[key] += 1
            assert int(occurrence[i, p]) == seen[key]
            assert first.setdefault(key, value) == value  # a repeated key brings back its first value
        assert len(first) <= 6
    assert synthetic_corpus("synthetic:icl?docs=300&pairs=24&keys=6&values=10&seed=4") == [[t] for t in texts]
    # values are uniform over the first `values` symbols: each digit about 1/10 of first occurrences
    firsts = seqs.values[occurrence == 1]
    freq = torch.bincount(firsts, minlength=10).double() / firsts.numel()
    assert float((freq - 0.1).abs().max()) < 0.03


def test_icl_tokens_are_one_byte_each():
    tok = ByteTokenizer()
    seqs = icl_sequences(3, pairs=5, keys=2, seed=0)
    for text, k, v in zip(seqs.texts(), seqs.keys, seqs.values):
        ids = tok.encode(text)
        assert ids[0::3] == [ord(KEY_SYMBOLS[i]) for i in k.tolist()]
        assert ids[1::3] == [ord(VALUE_SYMBOLS[i]) for i in v.tolist()]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "spec, match",
    [
        ("synthetic:nope", "unknown synthetic corpus 'nope'"),
        ("synthetic:markov?doc=3", "unknown parameter 'doc'"),
        ("synthetic:markov?docs=three", "'docs' .* must be an integer"),
        ("synthetic:markov?docs", "'docs' .* must be an integer"),
        ("synthetic:markov?docs=0", "docs must be an int >= 1"),
        ("synthetic:icl?keys=27", r"keys must be an int in \[1, 26\], got 27"),
        ("synthetic:topics?topic_words=300", "topic_words must be <= words"),
        ("synthetic:markov?branching=65", "branching must be <= topic_words"),
        ("synthetic:markov?min_sentences=5&max_sentences=4", "max_sentences must be an int >= 5"),
    ],
)
def test_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        load_corpus(spec)


def test_defaults_listed_and_parsed():
    for kind, defaults in SPEC_DEFAULTS.items():
        assert parse_spec(f"synthetic:{kind}") == (kind, defaults)


def test_source_validation():
    start = torch.tensor([[1.0, 0.0]], dtype=F64)
    loop = torch.tensor([[[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]], dtype=F64)  # ab -> cde -> ab -> ... never ends
    with pytest.raises(ValueError, match="never end"):
        MarkovSource(("ab", "cde"), start, loop)
    with pytest.raises(ValueError, match="sum to 1"):
        MarkovSource(("ab", "cde"), start, loop * 0.5)
    with pytest.raises(ValueError, match="lower-case ASCII"):
        MarkovSource(("Ab", "cde"), start, tiny_source().transitions)
    with pytest.raises(ValueError, match="distinct"):
        MarkovSource(("ab", "ab"), start, tiny_source().transitions)
    with pytest.raises(ValueError, match="shape"):
        MarkovSource(("ab", "cde"), start, tiny_source().transitions[:, :1])
    with pytest.raises(ValueError, match="not in the source's vocabulary"):
        tiny_source().log_prob(["Ab xyz."])
    assert tiny_source().log_prob(["Ab.", "Ab."]) == -math.inf  # two sentences: impossible with max_sentences=1
