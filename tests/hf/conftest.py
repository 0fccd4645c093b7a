"""Tiny tokenizers and texts for the Hugging Face tests: trained here on the built-in corpus, nothing downloaded."""

from __future__ import annotations

import functools

import pytest
import torch

pytest.importorskip("transformers")

from lmobjectives.constants import FIM_TOKENS, NUM_SENTINELS, sentinel_token  # noqa: E402
from lmobjectives.data import CHAT_TOKENS, builtin_corpus, train_tokenizer  # noqa: E402


@functools.lru_cache(maxsize=1)
def documents() -> list[list[str]]:
    """The first 40 documents of the built-in corpus (lists of sentences)."""
    return [doc for doc in builtin_corpus() if len(doc) >= 3][:40]


def texts(n: int = 16, sentences: int = 3) -> list[str]:
    """``n`` short documents: the first ``sentences`` sentences of each."""
    return [" ".join(doc[:sentences]) for doc in documents()[:n]]


_EXTRA = (
    *(sentinel_token(i) for i in range(NUM_SENTINELS)),
    *FIM_TOKENS.values(),
    *CHAT_TOKENS,
    "[NLU]",
    "[NLG]",
    "[S2S]",
)


@functools.lru_cache(maxsize=4)
def _fast(kind: str, pad_is_eos: bool):
    from transformers import PreTrainedTokenizerFast

    corpus = [" ".join(doc) for doc in documents()]
    raw = train_tokenizer(corpus, kind, vocab_size=400 if kind == "bpe" else 300, extra_special_tokens=_EXTRA).tokenizer
    eos = "[EOS]"
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        pad_token=eos if pad_is_eos else "[PAD]",
        eos_token=eos,
        unk_token="[UNK]",
        mask_token="[MASK]" if kind == "wordpiece" else None,
        cls_token="[CLS]" if kind == "wordpiece" else None,
        sep_token="[SEP]" if kind == "wordpiece" else None,
        bos_token="[BOS]" if kind == "bpe" else None,
        extra_special_tokens=list(_EXTRA),
    )
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return tok


@pytest.fixture(scope="session")
def bert_tokenizer():
    """WordPiece with [PAD] [CLS] [SEP] [MASK] (BERT-like); EOS too, pad != eos."""
    return _fast("wordpiece", pad_is_eos=False)


@pytest.fixture(scope="session")
def gpt_tokenizer():
    """Byte-level BPE whose pad token is its EOS (GPT-2, Llama)."""
    return _fast("bpe", pad_is_eos=True)


@pytest.fixture(scope="session")
def t5_tokenizer():
    """Byte-level BPE with [PAD] != EOS and T5's sentinels <extra_id_0> ... <extra_id_99>."""
    return _fast("bpe", pad_is_eos=False)


# --- tiny random models built from local configs (no downloads), dropout off so that two forwards agree

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _build(kind: str, tokenizer, *, seed: int = 0, attn: str = "eager", **extra):
    """A tiny model of ``kind`` for ``tokenizer``'s vocabulary, in eval mode."""
    torch.manual_seed(seed)
    V = len(tokenizer)
    import transformers as t

    if kind in ("bert_pretraining", "bert_mlm"):
        cfg = t.BertConfig(
            vocab_size=V,
            max_position_embeddings=128,
            pad_token_id=tokenizer.pad_token_id,
            **SMALL,
            **NO_DROPOUT,
            **extra,
        )
        cls = t.BertForPreTraining if kind == "bert_pretraining" else t.BertForMaskedLM
    elif kind == "albert_pretraining":
        cfg = t.AlbertConfig(
            vocab_size=V,
            embedding_size=16,
            max_position_embeddings=128,
            pad_token_id=tokenizer.pad_token_id,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            classifier_dropout_prob=0.0,
            **SMALL,
            **extra,
        )
        cls = t.AlbertForPreTraining
    elif kind in ("electra_generator", "electra_discriminator"):
        size = dict(SMALL, hidden_size=16, intermediate_size=32) if kind == "electra_generator" else SMALL
        cfg = t.ElectraConfig(
            vocab_size=V,
            max_position_embeddings=128,
            pad_token_id=tokenizer.pad_token_id,
            **size,
            **NO_DROPOUT,
            **{"embedding_size": 16, **extra},
        )
        cls = t.ElectraForMaskedLM if kind == "electra_generator" else t.ElectraForPreTraining
    elif kind == "gpt2":
        cfg = t.GPT2Config(
            vocab_size=V,
            n_positions=128,
            n_embd=32,
            n_layer=2,
            n_head=2,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **extra,
        )
        cls = t.GPT2LMHeadModel
    elif kind == "llama":
        cfg = t.LlamaConfig(
            vocab_size=V,
            max_position_embeddings=128,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
            **SMALL,
            **extra,
        )
        cls = t.LlamaForCausalLM
    elif kind == "t5":
        cfg = t.T5Config(
            vocab_size=V,
            d_model=32,
            d_kv=16,
            d_ff=64,
            num_layers=2,
            num_heads=2,
            dropout_rate=0.0,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
            **extra,
        )
        cls = t.T5ForConditionalGeneration
    elif kind == "xlnet":
        cfg = t.XLNetConfig(
            vocab_size=V,
            d_model=32,
            n_head=2,
            d_inner=64,
            dropout=0.0,
            pad_token_id=tokenizer.pad_token_id,
            **{"n_layer": 2, **extra},
        )
        cls = t.XLNetLMHeadModel
    else:
        raise ValueError(kind)
    cfg._attn_implementation = attn
    model = cls(cfg)
    return model.eval()


@pytest.fixture(scope="session")
def build():
    """``build(kind, tokenizer, seed=0, attn="eager", **config)``: a tiny model of ``kind``, in eval mode."""
    return _build


@pytest.fixture(scope="session")
def corpus():
    """``corpus.texts(n, sentences)`` and ``corpus.documents()``: the built-in corpus' first documents."""
    import types

    return types.SimpleNamespace(texts=texts, documents=documents)
