"""Data: corpora, tokenizers, and the packing of token ids into tensors for the objectives.

Typical use (offline, torch only)::

    from lmobjectives.data import builtin_corpus, load_tokenizer, tokenize_documents, pack_documents

    docs = builtin_corpus()                                  # list of documents (lists of sentences)
    tok = load_tokenizer("byte")                             # or "bpe:8000", "wordpiece:8000" (texts=...), a path
    ids, words = tokenize_documents(docs, tok, with_words=True)
    blocks = pack_documents(ids, 128, tok.vocab.eos_id, pad_id=tok.vocab.pad_id, word_ids=words)

Synthetic corpora with known statistics (``load_corpus("synthetic:markov?docs=500")``): a word-level
Markov source with an exact entropy (``markov_source(...).entropy()``), topic documents, and in-context
learning sequences (``icl_sequences``); see :mod:`lmobjectives.data.synthetic`.

NSP / SOP read sentences instead: ``sentence_table(tokenize_corpus(docs, tok), tok.vocab.pad_id)``.
"""

from .corpus import Document, builtin_corpus, load_corpus, read_corpus, split_sentences
from .packing import (
    PackedBlocks,
    SentenceTable,
    pack_documents,
    sentence_table,
    tokenize_corpus,
    tokenize_documents,
)
from .synthetic import (
    ICLSequences,
    MarkovSource,
    SampledCorpus,
    SourceEntropy,
    icl_sequences,
    markov_source,
    synthetic_corpus,
)
from .tokenizers import (
    ByteTokenizer,
    HFTokenizer,
    Tokenizer,
    load_tokenizer,
    train_tokenizer,
)

__all__ = [
    "ByteTokenizer",
    "Document",
    "HFTokenizer",
    "ICLSequences",
    "MarkovSource",
    "PackedBlocks",
    "SampledCorpus",
    "SentenceTable",
    "SourceEntropy",
    "Tokenizer",
    "builtin_corpus",
    "icl_sequences",
    "load_corpus",
    "load_tokenizer",
    "markov_source",
    "pack_documents",
    "read_corpus",
    "sentence_table",
    "split_sentences",
    "synthetic_corpus",
    "tokenize_corpus",
    "tokenize_documents",
    "train_tokenizer",
]
