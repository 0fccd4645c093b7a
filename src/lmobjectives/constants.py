"""Constants shared by every module. Each is defined here and only here."""

IGNORE_INDEX: int = -100
"""Label value meaning "no loss at this position" (the PyTorch / HF convention)."""

DEFAULT_SEED: int = 0
"""Seed used by the CLI and the trainer when none is given."""

NUM_SENTINELS: int = 100
"""Sentinel tokens a tokenizer built here reserves for span corruption (T5's 100 ``<extra_id_N>``)."""


def sentinel_token(i: int) -> str:
    """Spelling of the ``i``-th sentinel (T5's): ``sentinel_token(0) == "<extra_id_0>"``."""
    return f"<extra_id_{i}>"


PARADIGM_TOKENS: dict[str, str] = {"nlu_id": "[NLU]", "nlg_id": "[NLG]", "s2s_id": "[S2S]"}
"""UL2's mode-switching tokens (Tay et al. 2022), keyed by their :class:`~lmobjectives.Vocab` field."""

FIM_TOKENS: dict[str, str] = {
    "fim_prefix_id": "<|fim_prefix|>",
    "fim_middle_id": "<|fim_middle|>",
    "fim_suffix_id": "<|fim_suffix|>",
}
"""Fill-in-the-middle sentinels (Bavarian et al. 2022; StarCoder's spelling), keyed by their Vocab field.
The end-of-text token of FIM is the vocabulary's EOS."""
