"""``lmobj inspect``: one example of an objective, in the terminal and as a picture of its attention pattern.

:func:`example_batch` builds one example the way the trainer does (the
objective's recipe says how the text is laid out: packed blocks, sentence
pairs or raw documents; the tokenizer reserves the recipe's special tokens);
:func:`render_text` shows its corruption token by token, and
:func:`plot_example` draws what every position may attend to
(:func:`~lmobjectives.objectives.attention_mask_4d`) next to the positions
that carry a loss and what they predict. Nothing here knows an objective by
name: the pictures differ because the batches do (``causal``,
``prefix_mask``, ``document_ids``, ``perm_mask``, ``decoder_input_ids``).

Roles of an input token, in the terminal and in the picture's tick labels:

========  ==================================================  ======  ==========
role      meaning                                             plain   colour
========  ==================================================  ======  ==========
masked    the mask token replaced the original                ``M``   red, reversed
replaced  a random token replaced the original (a label       ``R``   yellow
          that differs from a non-special input, in a
          batch whose labels sit at their own position)
sentinel  a span-corruption sentinel                          ``S``   magenta
special   any other special token ([CLS], [EOS], FIM, ...)            cyan
kept      an ordinary token                                           plain
========  ==================================================  ======  ==========

A position that carries a loss is underlined (``^`` in plain text) and its
target is printed under it (a space as ``␣``). In a causal batch
(``causal=True``) and in a decoder, the output at position ``t`` predicts the
*next* token, so the target row is the input row shifted by one; elsewhere
(masked LM) it predicts the original token at ``t``. Trailing padding is not
shown.

Worked example (``lmobj inspect --objective mlm --probability 0.4 --seq-len 32
--seed 36 --text "The cat sat on the mat." --no-color``; byte tokenizer: the
input holds the text and its EOS, then padding)::

    input   TCe[MASK][MASK]at sat [MASK]n [MASK][MASK]e ma[MASK].[EOS]
    target   h ␣     c      t␣    o       t     h         t
             R M     M      ^^    M       M     M         M

Nine positions carry a loss: ``h`` was replaced by a random ``C``; seven
tokens were masked; ``t`` and the space after ``cat`` were selected but kept.

The picture needs matplotlib (``pip install matplotlib``), imported
only when a picture is drawn.
"""

from __future__ import annotations

import math
import shutil
import textwrap
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .._checks import check_choice, check_int, check_positive_int
from ..batch import Batch, Objective, attention_mask_4d
from ..constants import DEFAULT_SEED, IGNORE_INDEX
from ..data import builtin_corpus, load_tokenizer, split_sentences
from ..data.chat import conversations_from_documents, example_chat
from ..data.sources import data_texts
from ..recipes import OBJECTIVES, Recipe
from ..training.streams import build_stream

__all__ = [
    "DEFAULT_SEQ_LEN",
    "Example",
    "Panel",
    "TokenRow",
    "attention_panels",
    "default_documents",
    "example_batch",
    "figure",
    "plot_example",
    "render_text",
]

DEFAULT_SEQ_LEN = 64  # tokens per model input in `lmobj inspect`: short enough to label every row of the picture

ROLES = ("kept", "masked", "replaced", "sentinel", "special")
_MARK = {"masked": "M", "replaced": "R", "sentinel": "S"}  # plain-text stand-ins for the colours; "^" = has a loss
_ANSI = {
    "masked": "7;31",  # reversed red
    "replaced": "1;33",  # bold yellow
    "sentinel": "1;35",  # bold magenta
    "special": "36",  # cyan
    "target": "32",  # green
    "loss": "4",  # underline
}
_LEGEND = {
    "masked": "masked (the mask token)",
    "replaced": "random replacement",
    "sentinel": "sentinel",
    "special": "special token",
}
_PLOT_COLOURS = {
    "kept": "black",
    "masked": "#c0392b",
    "replaced": "#d68910",
    "sentinel": "#8e44ad",
    "special": "#138d90",
}


# ----------------------------------------------------------------------------- the example


@dataclass(frozen=True)
class Example:
    """One example of an objective: the batch (one row) and what made it."""

    name: str  # the objective's name in OBJECTIVES
    recipe: Recipe  # its registry entry
    objective: Objective  # the objective, built with options (and the run-set length option)
    options: dict[str, Any]  # the objective's options, defaults filled in (the length option excluded)
    batch: Batch  # one row, as the trainer would hand it to the model
    tokenizer: Any  # the tokenizer (it reserves the recipe's special tokens)
    seq_len: int  # tokens per model input
    seed: int  # the seed of the layout's draw and of the corruption


def default_documents() -> list[list[str]]:
    """The built-in passage: from each of the first three documents of the built-in corpus that have them, the
    first three consecutive ASCII sentences of at most 60 characters (short enough for a sentence pair of 64
    bytes; three documents, as next-sentence prediction draws a random B from another document)."""
    documents = []
    for doc in builtin_corpus():
        short = [len(s) <= 60 and s.isascii() for s in doc]
        start = next((i for i in range(len(doc) - 2) if all(short[i : i + 3])), None)
        if start is not None:
            documents.append(doc[start : start + 3])
            if len(documents) == 3:
                break
    return documents


def _documents(recipe: Recipe, name: str, text: str | None) -> list[Any]:
    """The text as documents (lists of sentences) or conversations, as the recipe's data layout needs them."""
    if text is None:
        return example_chat() if recipe.data == "conversations" else default_documents()
    if not isinstance(text, str):
        raise TypeError(f"text must be a str or None, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"text must hold some non-whitespace characters, got {text!r}")
    if recipe.data == "conversations":
        return conversations_from_documents([split_sentences(text)])  # the first sentence asks, the rest answers
    if recipe.data == "blocks":
        return [[text]]  # one document, verbatim (tokenize_documents joins a document's sentences with a space)
    sentences = split_sentences(text)  # sentence pairs and document windows draw from two documents at least
    if len(sentences) < 2:
        raise ValueError(
            f"objective {name!r} reads {recipe.data} from two documents at least, so its text must hold two "
            f"sentences or more (its two halves become the documents); got {len(sentences)} sentence(s) in {text!r}"
        )
    half = math.ceil(len(sentences) / 2)
    return [sentences[:half], sentences[half:]]


def example_batch(
    name: str,
    text: str | None = None,
    *,
    options: dict[str, Any] | None = None,
    seq_len: int = DEFAULT_SEQ_LEN,
    seed: int = DEFAULT_SEED,
    tokenizer: str = "byte",
) -> Example:
    """One example of objective ``name``, laid out and corrupted as the trainer does it.

    ``text`` (default: :func:`default_documents`) is tokenised with
    ``tokenizer`` (a :func:`~lmobjectives.data.load_tokenizer` spec; a
    ``bpe:N`` one is trained on the text) holding the recipe's special tokens,
    then laid out as the recipe's ``data`` says, by the trainer's own
    ``build_stream``: one document packed into blocks of
    ``recipe.block_length(objective, seq_len)`` tokens (``"blocks"``), or its
    sentences split into two documents (``"sentences"``, ``"documents"``: these
    draw from two documents at least). The example is the first one such a
    stream gives with batch size 1 and ``seed`` (which block, pair or row, and
    its corruption); ``seq_len`` sets the recipe's ``length_option``.

    >>> ex = example_batch("clm", "Hi there.", seq_len=16)
    >>> ex.tokenizer.decode(ex.batch.input_ids[0, :10].tolist())
    'Hi there.[EOS]'
    >>> ex.batch.labels[0, :3].tolist() == ex.tokenizer.encode("i t")
    True
    """
    check_choice(name, "objective", tuple(OBJECTIVES))
    check_positive_int(seq_len, "seq_len")
    check_int(seed, "seed")
    recipe = OBJECTIVES[name]
    full = recipe.full_options(options)
    documents = _documents(recipe, name, text)
    texts = data_texts(documents)
    tok = load_tokenizer(tokenizer, texts=texts, extra_special_tokens=recipe.special_tokens)
    objective = recipe.build(tok.vocab, full, seq_len=seq_len)  # checks the options
    try:
        stream = build_stream(recipe, objective, documents, tok, seq_len=seq_len, batch_size=1, seed=seed)
        batch = stream(0)
    except ValueError as e:  # build_stream's errors of a too short --seq-len already name the objective and the flag
        said = str(e).startswith(f"objective {name!r} (--seq-len")
        raise ValueError(
            str(e) if said else f"objective {name!r} made no example of this text with --seq-len {seq_len}: {e}"
        ) from None
    if batch.input_ids.shape[0] == 0:
        raise ValueError(f"objective {name!r} made no example from this text; give a longer text")
    return Example(
        name=name,
        recipe=recipe,
        objective=objective,
        options=full,
        batch=batch,
        tokenizer=tok,
        seq_len=seq_len,
        seed=seed,
    )


# ----------------------------------------------------------------------------- one row, token by token


@dataclass(frozen=True)
class TokenRow:
    """One sequence of the example (the input; an encoder-decoder's encoder input or decoder input), token by
    token, without its trailing padding."""

    tokens: list[str]  # each token decoded on its own
    roles: list[str]  # one of ROLES per token
    loss: list[bool]  # True where the output at this position carries a loss
    targets: list[str | None]  # the decoded label where loss, else None


def _real_length(mask: torch.Tensor) -> int:
    """Positions up to the last real one (trailing padding cut); all of them when none is real."""
    real = mask.nonzero().flatten()
    return int(real[-1]) + 1 if real.numel() else mask.numel()


def _decode_each(tok: Any, ids: list[int], joinable: list[bool]) -> list[str]:
    """Each token decoded on its own, except that a run of ``joinable`` tokens that decode to U+FFFD one by one
    but to whole characters together (the bytes of one UTF-8 character) shows the character at its first
    token and nothing at the others."""
    out = [tok.decode([i]) for i in ids]
    k = 0
    while k < len(ids):
        if joinable[k] and "\ufffd" in out[k]:
            for j in range(k + 2, min(k + 4, len(ids)) + 1):  # a UTF-8 character has at most 4 bytes
                if not joinable[j - 1]:
                    break
                text = tok.decode(ids[k:j])
                if "\ufffd" not in text:
                    out[k:j] = [text] + [""] * (j - k - 1)
                    k = j - 1
                    break
        k += 1
    return out


def _row(
    example: Example, ids: torch.Tensor, real: torch.Tensor, labels: torch.Tensor | None, next_token: bool
) -> TokenRow:
    """``ids``, ``real``, ``labels``: ``(T,)`` of one row; ``next_token``: labels are the next token's (causal)."""
    vocab, tok = example.tokenizer.vocab, example.tokenizer
    n = _real_length(real)
    ids_l = ids[:n].tolist()
    labels_l = labels[:n].tolist() if labels is not None else [IGNORE_INDEX] * n
    special, sentinels = set(vocab.special_ids), set(vocab.sentinel_ids)
    roles, loss = [], []
    for i, y in zip(ids_l, labels_l):
        has_loss = y != IGNORE_INDEX
        if i in sentinels:
            role = "sentinel"
        elif i == vocab.mask_id:
            role = "masked"
        elif i in special:
            role = "special"
        elif has_loss and not next_token and y != i:
            role = "replaced"
        else:
            role = "kept"
        roles.append(role)
        loss.append(has_loss)
    tokens = _decode_each(tok, ids_l, [r == "kept" for r in roles])
    decoded = _decode_each(tok, [y if y != IGNORE_INDEX else 0 for y in labels_l], loss)
    targets = [t if has_loss else None for t, has_loss in zip(decoded, loss)]
    return TokenRow(tokens=tokens, roles=roles, loss=loss, targets=targets)


def _rows(example: Example) -> list[tuple[str, TokenRow]]:
    """``[(name, row)]``: the input; for an encoder-decoder batch the encoder's input and the decoder's."""
    b = example.batch
    labels = b.labels[..., 0] if b.labels.dim() == 3 else b.labels  # (B, T); multi-token labels: the next token's
    if b.decoder_input_ids is None:
        return [("input", _row(example, b.input_ids[0], b.attention_mask[0], labels[0], next_token=b.causal))]
    decoder_real = (
        b.decoder_attention_mask
        if b.decoder_attention_mask is not None
        else torch.ones_like(b.decoder_input_ids, dtype=torch.bool)
    )
    return [
        ("encoder", _row(example, b.input_ids[0], b.attention_mask[0], None, next_token=False)),
        ("decoder", _row(example, b.decoder_input_ids[0], decoder_real[0], labels[0], next_token=True)),
    ]


# ----------------------------------------------------------------------------- terminal


_VISIBLE = {"\n": "↵", "\t": "⇥", "\r": "␍"}


def _shown(text: str, space: str = " ") -> str:
    """A token as one line: newline, tab and other control characters made visible."""
    out = []
    for ch in text:
        if ch in _VISIBLE:
            out.append(_VISIBLE[ch])
        elif ch == " ":
            out.append(space)
        elif unicodedata.category(ch) in ("Cc", "Cf"):
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


def _width(text: str) -> int:
    """Terminal columns of ``text`` (East Asian wide characters take two)."""
    return sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)


def _style(text: str, codes: Sequence[str], color: bool) -> str:
    codes = [c for c in codes if c]
    if not color or not codes or not text:
        return text
    return f"\x1b[{';'.join(codes)}m{text}\x1b[0m"


def _pad(text: str, width: int) -> str:
    return text + " " * (width - _width(text))


class _Cell(NamedTuple):
    """One position of a row in the terminal: what is printed in its column."""

    token: str  # the input token, control characters made visible
    role: str  # one of ROLES
    has_loss: bool  # the output at this position carries a loss
    target: str  # its target ("" without a loss), a space shown as ␣
    mark: str  # plain text: M, R, S or ^ (the stand-in for colours); "" in colour
    segment: str  # "A" or "B" for sentence pairs, else ""
    width: int  # terminal columns of the position


def _cells(row: TokenRow, *, color: bool, segments: list[str] | None) -> list[_Cell]:
    cells = []
    for k, (token, role, has_loss, target) in enumerate(zip(row.tokens, row.roles, row.loss, row.targets)):
        token, target = _shown(token), _shown(target, space="␣") if target is not None else ""
        merged = not token and not target  # a byte of a character shown at an earlier position
        mark = "" if color or merged else _MARK.get(role, "^" if has_loss else "")
        segment = segments[k] if segments is not None else ""
        cells.append(_Cell(token, role, has_loss, target, mark, segment, max(_width(token), _width(target), len(mark))))
    return cells


def _grid(
    name: str, row: TokenRow, *, color: bool, width: int, label_width: int, segments: list[str] | None
) -> list[str]:
    """The row as aligned lines, wrapped at ``width`` columns: the tokens, their targets, in plain text the
    marks (the stand-in for colours), and the segment (A/B) of each token when ``segments`` is given."""
    cells = _cells(row, color=color, segments=segments)
    lines: list[str] = []
    room = max(width - label_width, 8)
    start = 0
    while start < len(cells):
        end, used = start, 0
        while end < len(cells) and (end == start or used + cells[end].width <= room):
            used += cells[end].width
            end += 1
        chunk = cells[start:end]
        tokens = "".join(
            _style(c.token, [_ANSI.get(c.role, ""), _ANSI["loss"] if c.has_loss else ""], color)
            + " " * (c.width - _width(c.token))
            for c in chunk
        )
        targets = "".join(
            _style(c.target, [_ANSI["target"]], color) + " " * (c.width - _width(c.target)) for c in chunk
        )
        marks = "".join(_pad(c.mark, c.width) for c in chunk)
        if lines:
            lines.append("")
        lines.append(_pad(name, label_width) + tokens)
        if any(c.has_loss for c in chunk):
            lines.append(_pad("target", label_width) + targets)
        if marks.strip():
            lines.append(_pad("", label_width) + marks)
        if segments is not None:
            lines.append(_pad("segment", label_width) + "".join(c.segment * c.width for c in chunk))
        start = end
    return lines


def _self_pattern(batch: Batch) -> str:
    """The self-attention pattern in a few words, from the batch's fields (as :func:`attention_mask_4d` reads them)."""
    if batch.causal and batch.prefix_mask is not None:
        words = f"causal with a bidirectional prefix of {int(batch.prefix_mask[0].sum())} tokens"
    else:
        words = "causal" if batch.causal else "bidirectional"
    if batch.document_ids is not None:
        words += ", within documents"
    if batch.perm_mask is not None:
        words += ", minus the permutation mask"
    return words


def _attention_summary(batch: Batch) -> str:
    """What the batch's attention pattern is, in words."""
    text = _self_pattern(batch)
    if batch.decoder_input_ids is not None:
        return f"encoder {text}; decoder causal, and it sees every real encoder position"
    return text


def _options_text(example: Example) -> str:
    parts = [f"{k}={v!r}" for k, v in example.options.items()]
    return ", ".join(parts) if parts else "none"


def render_text(example: Example, *, color: bool = False, width: int | None = None) -> str:
    r"""The example's corruption as text: each row's tokens, its targets, the roles (see the module docstring).

    ``color``: ANSI colours (for a terminal); else plain text, with a row of
    marks in place of the colours. ``width``: wrap at this many columns
    (default: the terminal's width). Causal LM: each position predicts the next token.

    >>> text = render_text(example_batch("clm", "Hi cat.", seq_len=16), width=80)
    >>> print(text.split("\n\n")[1])
    input   Hi cat.    [EOS]
    target  i␣cat.[EOS]
            ^^^^^^^
    """
    if width is None:
        width = shutil.get_terminal_size((100, 24)).columns
    b = example.batch
    lines = [
        f"{example.name}: {example.recipe.summary}",
        f"options: {_options_text(example)}; seq_len={example.seq_len}, seed={example.seed}",
        f"attention: {_attention_summary(b)}",
    ]
    rows = _rows(example)
    label_width = (
        max(*(len(name) for name, _ in rows), len("segment" if b.token_type_ids is not None else "target")) + 2
    )
    for name, row in rows:
        segments = None
        if b.token_type_ids is not None and name == "input":
            segments = ["AB"[t] if t in (0, 1) else "?" for t in b.token_type_ids[0, : len(row.tokens)].tolist()]
        lines += ["", *_grid(name, row, color=color, width=width, label_width=label_width, segments=segments)]
    lines.append("")
    if b.sentence_labels is not None:
        lines.append(f"sentence label (the target of the sentence head): {int(b.sentence_labels[0])}")
    name, row = rows[-1]  # the row the labels belong to (the input, or the decoder's)
    lines.append(f"{sum(row.loss)} of the {len(row.tokens)} {name} positions shown carry a loss")
    present = [r for r in ROLES[1:] if any(r in row.roles for _, row in rows)]
    if color:
        legend = [
            _style("underlined", [_ANSI["loss"]], True) + ": has a loss",
            _style("target", [_ANSI["target"]], True) + ": what it predicts",
        ]
        legend += [_style(_LEGEND[r], [_ANSI[r]], True) for r in present]
    else:
        legend = ["^ has a loss (its target is above)"] + [f"{_MARK[r]} {_LEGEND[r]}" for r in present if r in _MARK]
    lines.append("legend: " + "; ".join(legend))
    return "\n".join(line.rstrip() for line in lines) + "\n"


# ----------------------------------------------------------------------------- picture


@dataclass(frozen=True)
class Panel:
    """One attention pattern of the example: which key each query may see, cut to the real tokens."""

    part: str  # "self", "decoder" or "cross" (the part argument of attention_mask_4d)
    title: str  # what it shows, for the picture
    allowed: torch.Tensor  # (Tq, Tk) bool: attention_mask_4d(batch, part)[0, 0] without trailing padding
    queries: TokenRow  # the query positions (rows)
    keys: TokenRow  # the key positions (columns)


def attention_panels(example: Example) -> list[Panel]:
    """The attention patterns to draw: ``self``; for an encoder-decoder batch also ``cross`` and ``decoder``."""
    b = example.batch
    rows = dict(_rows(example))
    if b.decoder_input_ids is None:
        row = rows["input"]
        n = len(row.tokens)
        title = f"self-attention: {_self_pattern(b)}"
        return [Panel("self", title, attention_mask_4d(b, "self")[0, 0, :n, :n], row, row)]
    enc, dec = rows["encoder"], rows["decoder"]
    n, m = len(enc.tokens), len(dec.tokens)
    return [
        Panel(
            "self", f"encoder self-attention: {_self_pattern(b)}", attention_mask_4d(b, "self")[0, 0, :n, :n], enc, enc
        ),
        Panel("cross", "decoder → encoder (cross-attention)", attention_mask_4d(b, "cross")[0, 0, :m, :n], dec, enc),
        Panel("decoder", "decoder self-attention: causal", attention_mask_4d(b, "decoder")[0, 0, :m, :m], dec, dec),
    ]


_MAY_ATTEND, _BLOCKED, _LOSS = "#1f4e79", "#f2f2f2", "#1e8449"


def _tick_labels(ax: Any, axis: str, row: TokenRow, size: float) -> None:
    labels = [_shown(t, space="␣") for t in row.tokens]
    if axis == "x":
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=size, fontfamily="monospace")
        ticks = ax.get_xticklabels()
    else:
        ax.set_yticks(range(len(labels)), labels, fontsize=size, fontfamily="monospace")
        ticks = ax.get_yticklabels()
    for tick, role in zip(ticks, row.roles):
        tick.set_color(_PLOT_COLOURS[role])
        if role != "kept":
            tick.set_fontweight("bold")
    ax.tick_params(axis=axis, length=0, pad=1)


def _draw_panel(
    ax: Any,
    panel: Panel,
    example: Example,
    *,
    label_size: float,
    ticks: bool,
    keys_on_top: bool = False,
    query_labels: bool = True,
) -> None:
    from matplotlib.colors import ListedColormap

    tq, tk = panel.allowed.shape
    ax.imshow(
        panel.allowed.int().numpy(),
        cmap=ListedColormap([_BLOCKED, _MAY_ATTEND]),
        vmin=0,
        vmax=1,
        interpolation="nearest",
        aspect="auto",
    )
    chars = max(10, int(ax.get_position().width * ax.figure.get_figwidth() * 13))  # title characters that fit
    ax.set_title("\n".join(textwrap.wrap(panel.title, chars)), fontsize=10)
    if keys_on_top:
        ax.xaxis.tick_top()
        ax.xaxis.set_label_position("top")
    ax.set_xlabel("key: the position attended to", fontsize=8)
    if query_labels:
        ax.set_ylabel("query: the position attending", fontsize=8)
    if ticks:
        _tick_labels(ax, "x", panel.keys, label_size)
        if query_labels:
            _tick_labels(ax, "y", panel.queries, label_size)
        else:
            ax.set_yticks(range(tq), [""] * tq)
            ax.tick_params(axis="y", length=0)
    else:
        ax.tick_params(labelsize=7)
    if max(tq, tk) <= 96:  # a thin white line between cells
        ax.set_xticks([x - 0.5 for x in range(1, tk)], minor=True)
        ax.set_yticks([y - 0.5 for y in range(1, tq)], minor=True)
        ax.grid(which="minor", color="white", linewidth=0.3)
        ax.tick_params(which="minor", length=0)
    _segment_lines(ax, example, panel)


def _draw_loss(ax: Any, queries: TokenRow, *, label_size: float, ticks: bool) -> None:
    from matplotlib.colors import ListedColormap

    loss = torch.tensor(queries.loss, dtype=torch.int32)[:, None]  # (Tq, 1)
    ax.imshow(
        loss.numpy(), cmap=ListedColormap([_BLOCKED, _LOSS]), vmin=0, vmax=1, interpolation="nearest", aspect="auto"
    )
    ax.set_title("loss", fontsize=10)
    ax.set_xticks([])
    ax.yaxis.tick_right()
    targets = [_shown(t, space="␣") if t is not None else "" for t in queries.targets]
    ax.set_yticks(
        range(len(targets)),
        targets if ticks else [""] * len(targets),
        fontsize=label_size,
        fontfamily="monospace",
        color=_LOSS,
    )
    ax.tick_params(axis="y", length=0, pad=2)


def figure(example: Example) -> Any:
    """A matplotlib ``Figure`` of the example's attention panels and its loss positions (Agg backend).

    Each panel is a boolean image, rows = queries, columns = keys (dark: may
    attend), from :func:`attention_panels`. The strip right of the panel(s)
    whose rows are the loss-carrying queries (the input; an encoder-decoder's
    decoder) marks the positions whose output carries a loss and names what
    each predicts. An encoder-decoder example is drawn on a grid that lines
    the panels up: the encoder's self-attention above the cross-attention
    (same key columns), the decoder's self-attention right of it (same query
    rows). Each image's axes has the label ``"attention:<part>"`` or ``"loss"``.
    """
    try:
        import matplotlib
    except ImportError:
        raise ImportError("the picture needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")  # files only; harmless when a backend is already chosen
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    panels = attention_panels(example)
    by_part = {p.part: p for p in panels}
    T = by_part["self"].allowed.shape[0]
    Td = by_part["decoder"].allowed.shape[0] if "decoder" in by_part else 0
    cells = T + Td
    size = max(3.5, min(9.0, 500 / max(cells, 1)))  # tick label font size, points
    ticks = cells <= 160
    inch = min(0.16, 9.0 / max(cells, 1))  # inches per token
    strip = max(1.0, 0.05 * cells)  # loss strip width, in tokens
    # the room around the images, so that they come out about square: tick labels, titles, legend
    rows = [p.queries for p in panels] + [p.keys for p in panels]
    longest = max((_width(_shown(t)) for row in rows for t in [*row.tokens, *filter(None, row.targets)]), default=1)
    label = (longest * size * 0.62 / 72 if ticks else 0.15) + 0.1  # inches of the longest tick label
    handles = [
        Patch(color=_MAY_ATTEND, label="may attend"),
        Patch(facecolor=_BLOCKED, edgecolor="#999999", label="cannot attend"),
        Patch(color=_LOSS, label="loss at this position"),
    ]
    handles += [
        Patch(color=_PLOT_COLOURS[r], label=_LEGEND[r] + " (tick label)")
        for r in ROLES[1:]
        if any(r in row.roles for row in rows)
    ]
    width = (cells + strip) * inch + 2 * label + 1.0 + (0.4 if Td else 0.0)
    ncols = max(1, min(len(handles), int(width / 2.3)))
    chars = int(width * 11)  # characters per line of the title, at its font size
    options = f"options: {_options_text(example)}; seq_len={example.seq_len}, seed={example.seed}"
    title = [*textwrap.wrap(f"{example.name}: {example.recipe.summary}", chars), *textwrap.wrap(options, chars)]
    height = (
        cells * inch
        + 0.2 * len(title)
        + (label + 0.9) * (2 if Td else 1)
        + 0.25 * math.ceil(len(handles) / ncols)
        + 0.6
    )
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    if not Td:
        grid = fig.add_gridspec(1, 2, width_ratios=[T, strip])
        _draw_panel(
            fig.add_subplot(grid[0, 0], label="attention:self"), by_part["self"], example, label_size=size, ticks=ticks
        )
        _draw_loss(fig.add_subplot(grid[0, 1], label="loss"), by_part["self"].queries, label_size=size, ticks=ticks)
    else:  # encoder self above cross (same keys); decoder self right of cross (same queries); loss right of that
        grid = fig.add_gridspec(2, 3, width_ratios=[T, Td, strip], height_ratios=[T, Td])
        _draw_panel(
            fig.add_subplot(grid[0, 0], label="attention:self"),
            by_part["self"],
            example,
            label_size=size,
            ticks=ticks,
            keys_on_top=True,
        )
        _draw_panel(
            fig.add_subplot(grid[1, 0], label="attention:cross"),
            by_part["cross"],
            example,
            label_size=size,
            ticks=ticks,
        )
        _draw_panel(
            fig.add_subplot(grid[1, 1], label="attention:decoder"),
            by_part["decoder"],
            example,
            label_size=size,
            ticks=ticks,
            query_labels=False,
        )
        _draw_loss(fig.add_subplot(grid[1, 2], label="loss"), by_part["decoder"].queries, label_size=size, ticks=ticks)
    fig.suptitle("\n".join(title), fontsize=10)
    fig.legend(handles=handles, loc="outside lower center", ncols=ncols, fontsize=8, frameon=False)
    return fig


def _segment_lines(ax: Any, example: Example, panel: Panel) -> None:
    """Thin lines where sentence pairs switch from segment A to B (token_type_ids), on the self panel."""
    b = example.batch
    if b.token_type_ids is None or panel.part != "self":
        return
    n = panel.allowed.shape[0]
    types = b.token_type_ids[0, :n]
    for t in (types[1:] != types[:-1]).nonzero().flatten().tolist():
        ax.axvline(t + 0.5, color="#d68910", linewidth=0.8)
        ax.axhline(t + 0.5, color="#d68910", linewidth=0.8)


def plot_example(example: Example, path: str | Path) -> Path:
    """Write :func:`figure` of ``example`` to ``path`` (a PNG) and return the path."""
    path = Path(path)
    fig = figure(example)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
