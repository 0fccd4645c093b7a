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
    # an id is an integer, never a bool or a float (True would silently be id 1, 2.7 id 2)
    with pytest.raises(ValueError, match="pad_id must be an int in \\[0, 5\\), got True"):
        Vocab(size=5, pad_id=True)
    with pytest.raises(ValueError, match="extra_special_ids must hold ints in \\[0, 5\\), got 2.7"):
        Vocab(size=5, extra_special_ids=(2.7,))
    w = Vocab(size=5, pad_id=torch.tensor(0), extra_special_ids=[torch.tensor(4)])  # integer-like ids become ints
    assert (type(w.pad_id), w.extra_special_ids) == (int, (4,))


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
    raw.add_tokens(["hello"])  # an ordinary added token is not special: it may be masked and drawn
    raw.add_special_tokens(["[EXTRA]"])
    v = Vocab.from_tokenizer(raw)
    assert (v.size, v.extra_special_ids) == (9, (8,))


def test_public_names_are_importable():
    import lmobjectives.data
    import lmobjectives.losses
    import lmobjectives.objectives
    import lmobjectives.recipes
    import lmobjectives.training

    modules = (lmobjectives, lmobjectives.objectives, lmobjectives.recipes, lmobjectives.data, lmobjectives.losses,
               lmobjectives.training)
    for module in modules:
        for name in module.__all__:
            assert getattr(module, name) is not None, (module.__name__, name)
    # what public functions return or the docs point to is exported from the package
    assert "SentencePairs" in lmobjectives.objectives.__all__
    assert {"word_ids_from_starts", "tokenize_conversation", "heldout_split"} <= set(lmobjectives.data.__all__)
    with pytest.raises(TypeError, match="tok"):
        Vocab.from_tokenizer(object())


def test_generator_device_must_match():
    with pytest.raises(TypeError, match="generator"):
        get_objective("clm", vocab=Vocab(size=5))(torch.tensor([[1, 2]]), generator=3)
