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
        tokenizer_object=raw,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
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

    modules = (
        lmobjectives,
        lmobjectives.objectives,
        lmobjectives.recipes,
        lmobjectives.data,
        lmobjectives.losses,
        lmobjectives.training,
    )
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


@pytest.mark.parametrize("bad", [2, -1])
def test_attention_mask_values_other_than_0_and_1_are_refused_by_every_objective(bad):
    # 2 and -1 used to be read as 1 (a real token); every objective checks its masks through check_like
    from lmobjectives.recipes import OBJECTIVES

    vocab = Vocab(
        size=50,
        pad_id=0,
        eos_id=1,
        cls_id=2,
        sep_id=3,
        mask_id=4,
        sentinel_ids=(49, 48, 47, 46),
        nlu_id=45,
        nlg_id=44,
        s2s_id=43,
        fim_prefix_id=42,
        fim_middle_id=41,
        fim_suffix_id=40,
    )
    x = torch.randint(5, 40, (2, 12), generator=torch.Generator().manual_seed(0))
    extras = {  # what each objective needs besides input_ids
        "spanbert": {"word_ids": torch.arange(12).expand(2, 12)},
        "nsp": {"document_ids": torch.tensor([0, 1])},
        "sop": {"document_ids": torch.tensor([0, 0])},
        "sft": {"roles": torch.tensor([[0] * 6 + [2] * 6] * 2)},
    }
    no_mask = {"fim"}  # takes documents, not a padded batch
    assert no_mask | set(extras) <= set(OBJECTIVES)
    for name in sorted(set(OBJECTIVES) - no_mask):
        objective = get_objective(name, vocab=vocab)
        ok = torch.ones(2, 12, dtype=torch.long)
        objective(x, attention_mask=ok, generator=torch.Generator().manual_seed(0), **extras.get(name, {}))
        mask = ok.clone()
        mask[1, 5] = bad
        with pytest.raises(
            ValueError, match=rf"^attention_mask must hold only 0 and 1 \(or be a bool tensor\), got {bad} at \[1, 5\]$"
        ):
            objective(x, attention_mask=mask, generator=torch.Generator().manual_seed(0), **extras.get(name, {}))


def test_bool_masks_check_their_values():
    from lmobjectives._checks import check_like

    ref = torch.zeros(2, 3, dtype=torch.long)
    assert check_like(torch.tensor([[0, 1, 1], [1, 0, 0]]), ref, "m", dtype="bool").tolist() == [
        [False, True, True],
        [True, False, False],
    ]
    assert (
        check_like(torch.tensor([[0, 1, 1], [1, 0, 0]], dtype=torch.uint8), ref, "m", dtype="bool").dtype == torch.bool
    )
    with pytest.raises(ValueError, match=r"^m must hold only 0 and 1 \(or be a bool tensor\), got 3 at \[0, 2\]$"):
        check_like(torch.tensor([[0, 1, 3], [1, 0, 0]]), ref, "m", dtype="bool")
    with pytest.raises(TypeError, match="m must be a bool"):
        check_like(torch.ones(2, 3), ref, "m", dtype="bool")
