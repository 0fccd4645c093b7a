"""Vocab: special tokens that an objective inserts must each have an id of their own."""

import pytest

from lmobjectives import Vocab


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"mask_id": 3, "cls_id": 3}, "mask_id=3 is also cls_id"),
        ({"pad_id": 0, "mask_id": 0}, "mask_id=0 is also pad_id"),
        ({"eos_id": 1, "sentinel_ids": (9, 1)}, r"sentinel_ids\[1\]=1 is also eos_id"),
        ({"pad_id": 0, "nlu_id": 0}, "nlu_id=0 is also pad_id"),
        ({"nlu_id": 4, "nlg_id": 4}, "nlg_id=4 is also nlu_id"),
        ({"mask_id": 5, "sentinel_ids": (5,)}, r"sentinel_ids\[0\]=5 is also mask_id"),
        ({"fim_prefix_id": 6, "fim_suffix_id": 6}, "fim_suffix_id=6 is also fim_prefix_id"),
        ({"eos_id": 7, "fim_middle_id": 7}, "fim_middle_id=7 is also eos_id"),
        ({"unk_id": 2, "mask_id": 2}, "mask_id=2 is also unk_id"),
    ],
)
def test_inserted_tokens_sharing_an_id_are_refused(fields, message):
    with pytest.raises(ValueError, match=f"^Vocab: {message}; ") as e:
        Vocab(size=10, **fields)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "fields",
    [
        {"pad_id": 2, "eos_id": 2},  # GPT-2 / Llama fine-tuning: padding with EOS (documented)
        {"bos_id": 0, "eos_id": 0, "unk_id": 0},  # GPT-2: <|endoftext|> is BOS, EOS and UNK
        {"cls_id": 0, "bos_id": 0, "sep_id": 2, "eos_id": 2, "pad_id": 1, "mask_id": 3},  # RoBERTa
        {"pad_id": 0, "unk_id": 0},  # a pad token set to UNK
    ],
)
def test_structural_tokens_may_share_an_id(fields):
    Vocab(size=10, **fields)
