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

Chat data for SFT: :func:`tokenize_conversation` renders and tokenises one conversation with each token's role
(prompt, assistant turn, final answer), :func:`pack_chat` packs many into rows; :func:`load_chat` reads them.
The held-out split is :func:`heldout_split`; ``--data`` is read by :func:`load_data`.
"""

from .chat import builtin_chat, load_chat, read_chat, write_chat
from .chat_template import (
    CHAT_TOKENS,
    TokenizedConversation,
    learned_mask,
    render_chatml,
    tokenize_conversation,
)
from .corpus import Document, builtin_corpus, read_corpus, split_sentences
from .heldout import document_key, heldout_split, is_heldout
from .packing import (
    PackedBlocks,
    PackedConversations,
    SentenceTable,
    pack_chat,
    pack_conversations,
    pack_documents,
    sentence_table,
    tokenize_corpus,
    tokenize_documents,
)
from .sources import data_texts, load_corpus, load_data
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
    word_ids_from_starts,
)

__all__ = [
    "CHAT_TOKENS",
    "builtin_chat",
    "builtin_corpus",
    "data_texts",
    "document_key",
    "heldout_split",
    "icl_sequences",
    "is_heldout",
    "learned_mask",
    "load_chat",
    "load_corpus",
    "load_data",
    "load_tokenizer",
    "markov_source",
    "pack_chat",
    "pack_conversations",
    "pack_documents",
    "read_chat",
    "read_corpus",
    "render_chatml",
    "sentence_table",
    "split_sentences",
    "synthetic_corpus",
    "tokenize_conversation",
    "tokenize_corpus",
    "tokenize_documents",
    "train_tokenizer",
    "word_ids_from_starts",
    "write_chat",
    "ByteTokenizer",
    "Document",
    "HFTokenizer",
    "ICLSequences",
    "MarkovSource",
    "PackedBlocks",
    "PackedConversations",
    "SampledCorpus",
    "SentenceTable",
    "SourceEntropy",
    "TokenizedConversation",
    "Tokenizer",
]
