"""Tokenising chat conversations for supervised fine-tuning, with a loss mask that comes from the rendering.

:func:`tokenize_conversation` renders each message with the tokenizer's chat template, tokenises the
parts (the template's text before a message, each assistant turn's header, its answer up to and including
its end-of-turn token, what follows), checks that the parts tokenise back to the whole conversation, and
labels the answer tokens. Unlike a search for a response template in the token ids (which misses when a
tokenizer merges the template's last characters with the answer's first), or a ``{% generation %}`` tag
(which most templates lack), the mask is exact by construction: each token comes from exactly one part.
Where the whole conversation would tokenise differently at a part boundary (a merge across it), the
boundary is counted in :attr:`TokenizedConversation.boundary_merges` and, by default, the parts' tokens are
kept: every label stays exact, and at the prompt/answer boundary this is also how the model sees it at
generation time (the prompt is tokenised up to the generation header, then the answer is generated token by
token). ``on_merge="error"`` refuses such a conversation instead.

Tokenizers: a ``transformers`` tokenizer uses its ``chat_template`` (one is required when messages are
given). The package's own tokenizers (:class:`~lmobjectives.data.tokenizers.ByteTokenizer`,
:class:`~lmobjectives.data.tokenizers.HFTokenizer`: ``lmobj train --tokenizer``) have no chat template and
use the built-in ChatML format (:func:`render_chatml`), whose two special tokens :data:`CHAT_TOKENS` the
tokenizer must reserve (``load_tokenizer(..., extra_special_tokens=CHAT_TOKENS)``; the ``sft`` recipe does).

Prompt/completion records with string fields are plain text, no template (as TRL's "standard"
prompt-completion format): ``prompt + completion + EOS``, the completion and the EOS learned.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .._checks import check_choice
from ..constants import IGNORE_INDEX

__all__ = [
    "ASSISTANT",
    "CHAT_TOKENS",
    "COMPLETION",
    "MESSAGE_ROLES",
    "PROMPT",
    "TRAIN_ON",
    "TokenizedConversation",
    "check_record",
    "learned_mask",
    "render_chatml",
    "tokenize_conversation",
]

CHAT_TOKENS: tuple[str, str] = ("<|im_start|>", "<|im_end|>")
"""The special tokens of the built-in ChatML format (start of a message, end of a turn)."""

MESSAGE_ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")
"""The roles a message may have."""

ON_MERGE = ("split", "error")

PROMPT, ASSISTANT, COMPLETION = 0, 1, 2  # token roles: context, an assistant turn, the final assistant turn
TRAIN_ON = ("assistant", "completion", "all")  # which roles are learned (see learned_mask)


def learned_mask(roles: torch.Tensor, train_on: str, real: torch.Tensor | None = None) -> torch.Tensor:
    """Which tokens the model learns to produce, from their roles: bool, the shape of ``roles``.

    ``train_on="assistant"``: every assistant turn (role :data:`ASSISTANT` or :data:`COMPLETION`);
    ``"completion"``: the final assistant turn / the completion only (:data:`COMPLETION`); ``"all"``:
    every real token (``real``, default all), prompts and template included, as plain CLM on the
    rendered text would.

    >>> learned_mask(torch.tensor([0, 1, 1, 0, 2, 2]), "assistant").int()
    tensor([0, 1, 1, 0, 1, 1], dtype=torch.int32)
    >>> learned_mask(torch.tensor([0, 1, 1, 0, 2, 2]), "completion").int()
    tensor([0, 0, 0, 0, 1, 1], dtype=torch.int32)
    """
    check_choice(train_on, "train_on", TRAIN_ON)
    if train_on == "assistant":
        return roles >= ASSISTANT
    if train_on == "completion":
        return roles == COMPLETION
    return torch.ones_like(roles, dtype=torch.bool) if real is None else real.clone()


@dataclass
class TokenizedConversation:
    """One conversation's tokens, labels and roles (lists of the same length)."""

    input_ids: list[int]  # token ids of the rendered conversation, part by part
    labels: list[int]  # input_ids where learned (see train_on), IGNORE_INDEX elsewhere; not shifted
    roles: list[int]  # per token: 0 prompt / template, 1 assistant turn, 2 final assistant turn (or completion)
    boundary_merges: int  # part boundaries where the whole text tokenises differently (0: parts == whole)
    boundaries: int  # part boundaries checked (non-empty parts - 1)


# ----------------------------------------------------------------------------- checks


def _check_messages(messages: object, name: str) -> list[Mapping[str, Any]]:
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise TypeError(
            f"{name} must be a list of messages (dicts with 'role' and 'content'), got {type(messages).__name__}"
        )
    if not messages:
        raise ValueError(f"{name} is empty; a conversation needs at least one message and an assistant turn")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise TypeError(f"{name}[{i}] must be a dict with 'role' and 'content', got {type(message).__name__}")
        role = message.get("role")
        check_choice(role, f"{name}[{i}]['role']", MESSAGE_ROLES)
        if not isinstance(message.get("content"), str):
            raise TypeError(f"{name}[{i}]['content'] must be a str, got {type(message.get('content')).__name__}")
    return list(messages)


def check_record(
    record: object, name: str = "messages"
) -> tuple[list[Mapping[str, Any]] | None, tuple[str, str] | None, int]:
    """Check one conversation and say what it is: ``(messages, None, first)`` for chat messages, where messages
    from index ``first`` on are the completion, or ``(None, (prompt, completion), 0)`` for a plain-text pair.

    Accepted: a list of messages; ``{"messages": [...]}``; ``{"prompt": str, "completion": str}``;
    ``{"prompt": [messages], "completion": [messages]}``. For plain messages the completion is the last
    assistant turn. Raises ``TypeError`` / ``ValueError`` naming ``name`` (and the message and field) for an
    unknown shape or role, content that is not a string, or no assistant turn.

    >>> check_record([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])[2]
    1
    >>> check_record({"prompt": "2+2=", "completion": "4"})
    (None, ('2+2=', '4'), 0)
    """
    if isinstance(record, Mapping):
        if "messages" in record:
            return check_record(record["messages"], f"{name}['messages']")
        if "prompt" in record and "completion" in record:
            prompt, completion = record["prompt"], record["completion"]
            if isinstance(prompt, str) and isinstance(completion, str):
                return None, (prompt, completion), 0
            prompt_messages = _check_messages(prompt, f"{name}['prompt']")
            completion_messages = _check_messages(completion, f"{name}['completion']")
            if not any(m["role"] == "assistant" for m in completion_messages):
                raise ValueError(f"{name}['completion'] has no assistant turn; nothing to learn")
            return prompt_messages + completion_messages, None, len(prompt_messages)
        raise ValueError(
            f"{name} must have a 'messages' list or 'prompt' and 'completion' fields, got keys {sorted(map(str, record))}"
        )
    checked = _check_messages(record, name)
    assistant = [i for i, m in enumerate(checked) if m["role"] == "assistant"]
    if not assistant:
        roles = [m["role"] for m in checked]
        raise ValueError(f"{name} has no assistant turn (roles {roles}); an SFT conversation needs one to learn from")
    return checked, None, assistant[-1]


# ----------------------------------------------------------------------------- rendering


def render_chatml(messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False) -> str:
    """The built-in chat format (ChatML, as Qwen and OpenAI's ChatML), for tokenizers without a chat template::

        <|im_start|>{role}\\n{content}<|im_end|>\\n      (each message)
        <|im_start|>assistant\\n                          (the generation prompt)

    ``<|im_end|>`` is the end-of-turn token the model learns after each answer; nothing else is added (no
    BOS, no default system message).

    >>> render_chatml([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
    """
    start, end = CHAT_TOKENS
    text = "".join(f"{start}{m['role']}\n{m['content']}{end}\n" for m in messages)
    return text + (f"{start}assistant\n" if add_generation_prompt else "")


def _is_transformers(tokenizer: Any) -> bool:
    return callable(getattr(tokenizer, "apply_chat_template", None))


def _special_ids(tokenizer: Any, spellings: Sequence[str]) -> dict[str, int]:
    """Ids of ``spellings`` in one of the package's tokenizers; missing ones are left out."""
    found: dict[str, int] = {}
    specials = getattr(tokenizer, "specials", None)  # ByteTokenizer: specials[i] has id 256 + i
    inner = getattr(tokenizer, "tokenizer", None)  # HFTokenizer: the wrapped tokenizers.Tokenizer
    for s in spellings:
        if specials is not None and s in specials:
            found[s] = 256 + list(specials).index(s)
        elif inner is not None and callable(getattr(inner, "token_to_id", None)) and inner.token_to_id(s) is not None:
            found[s] = inner.token_to_id(s)
    return found


@dataclass
class _Format:
    """How a tokenizer renders and encodes: the functions tokenize_conversation needs."""

    render: Callable[[list[Mapping[str, Any]], bool], str]
    encode: Callable[[str], list[int]]
    specials: list[str]  # spellings of special tokens (an assistant turn's learned part ends after the last one)
    eos_id: int | None


def _format(tokenizer: Any, need_template: bool) -> _Format:
    if _is_transformers(tokenizer):
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        specials = list(
            dict.fromkeys([*tokenizer.all_special_tokens, *(t.content for t in added.values() if t.special)])
        )
        if need_template and not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"tokenizer ({type(tokenizer).__name__}) has no chat_template, so messages cannot be rendered; set "
                "tokenizer.chat_template (a Jinja template), or use one of lmobjectives' tokenizers, which render the "
                "built-in ChatML format (lmobjectives.data.render_chatml)"
            )

        def render(messages: list[Mapping[str, Any]], generation: bool) -> str:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

        def encode(text: str) -> list[int]:
            return list(tokenizer.encode(text, add_special_tokens=False))

        return _Format(render, encode, specials, tokenizer.eos_token_id)
    if not callable(getattr(tokenizer, "encode", None)) or not hasattr(tokenizer, "vocab"):
        raise TypeError(
            "tokenizer must be a transformers tokenizer (with a chat_template) or one of lmobjectives' tokenizers "
            f"(ByteTokenizer, HFTokenizer: load_tokenizer), got {type(tokenizer).__name__}"
        )
    ids = _special_ids(tokenizer, CHAT_TOKENS)
    if need_template and len(ids) < len(CHAT_TOKENS):
        missing = [s for s in CHAT_TOKENS if s not in ids]
        raise ValueError(
            f"tokenizer {tokenizer!r} has no chat template and lacks the special tokens {missing} of the built-in "
            "ChatML format; load it with load_tokenizer(spec, extra_special_tokens=lmobjectives.data.CHAT_TOKENS)"
        )
    pattern = re.compile("(" + "|".join(map(re.escape, ids)) + ")") if ids else None

    def encode_own(text: str) -> list[int]:
        if pattern is None:
            return list(tokenizer.encode(text))
        out: list[int] = []
        for k, piece in enumerate(pattern.split(text)):  # odd pieces are the chat tokens themselves
            out.extend([ids[piece]] if k % 2 else tokenizer.encode(piece) if piece else [])
        return out

    return _Format(render_chatml, encode_own, list(ids), tokenizer.vocab.eos_id)


def _learned_end(body: str, specials: Sequence[str]) -> int:
    """Length of an assistant turn's learned part: up to and including its last special token (the end of
    turn), so separators the template adds after it are not learned; all of it if it holds no special token."""
    if not specials:
        return len(body)
    matches = list(re.finditer("|".join(map(re.escape, sorted(specials, key=len, reverse=True))), body))
    return matches[-1].end() if matches else len(body)


def _parts(messages: list[Mapping[str, Any]], first_completion: int, fmt: _Format) -> list[tuple[str, int]]:
    """The rendered conversation cut into ``(text, role)`` parts, each message rendered in its context."""
    parts: list[tuple[str, int]] = []
    before = ""
    for k, message in enumerate(messages):
        full = fmt.render(messages[: k + 1], False)
        if not full.startswith(before):
            raise ValueError(
                f"the chat template is not prefix-stable: rendering messages[:{k + 1}] does not start with the rendering "
                f"of messages[:{k}], so which tokens belong to message {k} cannot be told; tokenize_conversation needs "
                "a template that renders each message after the ones before it"
            )
        if message["role"] != "assistant":
            parts.append((full[len(before) :], PROMPT))
        else:
            header = fmt.render(messages[:k], True)
            if not (header.startswith(before) and full.startswith(header)):
                raise ValueError(
                    f"the chat template's generation prompt for messages[{k}] (add_generation_prompt=True after "
                    f"messages[:{k}]) is not where the rendered assistant turn starts; cannot tell its header from its answer"
                )
            body = full[len(header) :]
            end = _learned_end(body, fmt.specials)
            role = COMPLETION if k >= first_completion else ASSISTANT
            parts += [(header[len(before) :], PROMPT), (body[:end], role), (body[end:], PROMPT)]
        before = full
    return parts


def tokenize_conversation(
    messages: object, tokenizer: Any, *, train_on: str = "assistant", on_merge: str = "split"
) -> TokenizedConversation:
    """Tokens and labels of one conversation, the labels masked to the tokens the model should learn.

    ``messages``: a list of ``{"role", "content"}`` messages (roles :data:`MESSAGE_ROLES`, at least one
    assistant turn), or a JSONL record (see :func:`check_record`): ``{"messages": [...]}``,
    ``{"prompt": str, "completion": str}`` or ``{"prompt": [...], "completion": [...]}``.

    ``train_on``: ``"assistant"`` (default: every assistant turn with its end-of-turn token),
    ``"completion"`` (only the final assistant turn, or the completion), ``"all"`` (every token).

    Labels are **not** shifted: ``labels[i]`` is ``input_ids[i]`` where that token is learned (the
    ``transformers`` convention; :class:`~lmobjectives.objectives.sft.SupervisedFineTuning` shifts, once,
    through :class:`~lmobjectives.objectives.clm.CausalLM`). The end-of-turn / EOS token closing each
    learned turn is learned whatever the pad token is.

    How the parts are found: message ``k`` is the text the template adds when ``messages[:k+1]`` is rendered
    after ``messages[:k]``; an assistant turn splits into its header (what ``add_generation_prompt=True``
    adds), its answer up to and including the last special token of the turn (the end of turn), and the
    rest (e.g. ChatML's newline), which is not learned. A template that re-renders earlier messages
    differently later (not prefix-stable) is refused with a ``ValueError``. ``on_merge``: ``"split"``
    (default) keeps the parts' tokens where the whole text tokenises differently across a boundary and
    counts it in ``boundary_merges``; ``"error"`` raises ``ValueError`` instead.

    With lmobjectives' ByteTokenizer and the built-in ChatML format::

        <|im_start|> u s e r \\n H i <|im_end|> \\n <|im_start|> a s s i s t a n t \\n Y o <|im_end|> \\n
        prompt ...........................................................  learned ....... prompt

    >>> from lmobjectives.data.tokenizers import ByteTokenizer
    >>> tok = ByteTokenizer(extra_special_tokens=CHAT_TOKENS)   # <|im_start|> = 263, <|im_end|> = 264
    >>> out = tokenize_conversation([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}], tok)
    >>> out.input_ids[-4:], out.labels[-4:], out.roles[-4:]
    ([89, 111, 264, 10], [89, 111, 264, -100], [2, 2, 2, 0])
    >>> sum(label != -100 for label in out.labels), len(out.input_ids), out.boundary_merges
    (3, 25, 0)
    """
    check_choice(train_on, "train_on", TRAIN_ON)
    check_choice(on_merge, "on_merge", ON_MERGE)
    checked, pair, first_completion = check_record(messages, "messages")
    fmt = _format(tokenizer, need_template=checked is not None)
    if checked is not None:
        parts = _parts(checked, first_completion, fmt)
        eos: list[int] = []
    else:
        assert pair is not None
        if fmt.eos_id is None:
            raise ValueError(f"tokenizer {type(tokenizer).__name__} has no EOS token; a completion must end with one")
        parts, eos = [(pair[0], PROMPT), (pair[1], COMPLETION)], [fmt.eos_id]
    parts = [(text, role) for text, role in parts if text]
    input_ids: list[int] = []
    roles: list[int] = []
    for text, role in parts:  # one encode per part: each token comes from exactly one part
        ids = fmt.encode(text)
        input_ids += ids
        roles += [role] * len(ids)
    merges = _boundary_merges([text for text, _ in parts], input_ids, fmt.encode, on_merge)
    input_ids += eos
    roles += [COMPLETION] * len(eos)
    if train_on == "all":
        labels = list(input_ids)
    else:
        wanted = (ASSISTANT, COMPLETION) if train_on == "assistant" else (COMPLETION,)
        labels = [i if r in wanted else IGNORE_INDEX for i, r in zip(input_ids, roles)]
    return TokenizedConversation(input_ids, labels, roles, merges, max(len(parts) - 1, 0))


def _boundary_merges(texts: list[str], parts_ids: list[int], encode: Callable[[str], list[int]], on_merge: str) -> int:
    """How many part boundaries the whole text's tokenisation does not respect (0 when it equals the parts')."""
    whole = encode("".join(texts))
    if whole == parts_ids:
        return 0
    joined = "".join(texts)
    cuts, at = [], 0
    for text in texts[:-1]:
        at += len(text)
        cuts.append(at)
    crossed = [k for k, c in enumerate(cuts) if encode(joined[:c]) + encode(joined[c:]) != whole]
    if on_merge == "error":
        k = crossed[0] if crossed else 0
        c = cuts[k] if cuts else 0
        raise ValueError(
            f"the tokenizer merges across a part boundary: the whole conversation tokenises differently from its parts "
            f"at {max(len(crossed), 1)} of {len(cuts)} boundaries, first between {joined[max(c - 20, 0) : c]!r} and "
            f"{joined[c : c + 20]!r}; pass on_merge='split' to keep the parts' tokens (exact labels) and count it"
        )
    return max(len(crossed), 1)
