import pytest
import torch

import lmobjectives
from lmobjectives import IGNORE_INDEX, Vocab, get_objective


def test_ignore_index():
    assert IGNORE_INDEX == -100
    from lmobjectives import constants

    assert constants.IGNORE_INDEX is lmobjectives.IGNORE_INDEX


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="clm.*mlm.*nsp.*sop"):
        get_objective("gpt", vocab=Vocab(size=5))


def test_unknown_option_lists_valid_ones():
    with pytest.raises(ValueError, match="'colour'.*valid options: document_masking"):
        get_objective("clm", vocab=Vocab(size=5), colour=1)


def test_vocab_validation():
    with pytest.raises(ValueError, match="size"):
        Vocab(size=0)
    with pytest.raises(ValueError, match="mask_id"):
        Vocab(size=5, mask_id=5)
    v = Vocab(size=8, pad_id=0, mask_id=3, cls_id=1, sep_id=2, eos_id=0, extra_special_ids=(7,))
    assert v.special_ids == (0, 1, 2, 3, 7)
    assert v.special_mask().tolist() == [True, True, True, True, False, False, False, True]


def test_vocab_from_hf_tokenizers():
    pytest.importorskip("tokenizers")
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]
    raw = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    raw.add_special_tokens(words[:5])
    v = Vocab.from_tokenizer(raw)
    assert (v.size, v.pad_id, v.unk_id, v.cls_id, v.sep_id, v.mask_id) == (7, 0, 1, 2, 3, 4)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]"
    )
    assert Vocab.from_tokenizer(fast) == v
    with pytest.raises(TypeError, match="tok"):
        Vocab.from_tokenizer(object())


def test_generator_device_must_match():
    with pytest.raises(TypeError, match="generator"):
        get_objective("clm", vocab=Vocab(size=5))(torch.tensor([[1, 2]]), generator=3)
