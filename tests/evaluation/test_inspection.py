"""``lmobj inspect``: every registered objective, literal terminal renderings, colours, the picture's data, errors."""

from __future__ import annotations

import re
import sys

import pytest
import torch

from lmobjectives import OBJECTIVES, attention_mask_4d
from lmobjectives.cli import main
from lmobjectives.constants import IGNORE_INDEX, sentinel_token
from lmobjectives.data import ByteTokenizer
from lmobjectives.evaluation.inspection import Example, attention_panels, example_batch, figure, render_text
from lmobjectives.objectives.span_corruption import SpanCorruption
from lmobjectives.recipes import Recipe

ANSI = re.compile(r"\x1b\[[0-9;]*m")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _real_length(mask: torch.Tensor) -> int:
    return int(mask.nonzero().max()) + 1


# ----------------------------------------------------------------------------- every objective, through the CLI


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_every_objective_prints_its_example_and_writes_a_png(name, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / f"{name}.png"
    assert main(["inspect", "--objective", name, "--seq-len", "32", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"{name}: {OBJECTIVES[name].summary}\n")
    assert re.search(r"^(input|encoder) ", printed, re.M)  # a row of tokens
    assert "\x1b[" not in printed  # captured output is not a terminal
    assert f"picture: {out}" in printed
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5_000


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_attention_panels_are_the_batch_attention_mask(name):
    pytest.importorskip("matplotlib")
    example = example_batch(name, seq_len=32, seed=1)
    b = example.batch
    n = _real_length(b.attention_mask[0])
    fig = figure(example)
    images = {ax.get_label(): ax.images[0].get_array() for ax in fig.axes if ax.images}
    expected = {"attention:self": attention_mask_4d(b, "self")[0, 0, :n, :n]}
    if b.decoder_input_ids is not None:
        m = _real_length(b.decoder_attention_mask[0])
        expected["attention:cross"] = attention_mask_4d(b, "cross")[0, 0, :m, :n]
        expected["attention:decoder"] = attention_mask_4d(b, "decoder")[0, 0, :m, :m]
        labels = b.labels[0, :m]
    else:
        labels = b.labels[0, :n] if b.labels.dim() == 2 else b.labels[0, :n, 0]  # mtp: the next-token column
    for label, mask in expected.items():
        assert torch.equal(torch.as_tensor(images[label]).bool(), mask), label
    assert torch.equal(torch.as_tensor(images["loss"])[:, 0].bool(), labels != IGNORE_INDEX)


# ----------------------------------------------------------------------------- literal renderings


def test_clm_rendering_literal():
    text = render_text(example_batch("clm", "Hi cat.", seq_len=16), width=80)
    assert text == (
        f"clm: {OBJECTIVES['clm'].summary}\n"
        "options: document_masking=False; seq_len=16, seed=0\n"
        "attention: causal\n"
        "\n"
        "input   Hi cat.    [EOS]\n"  # the 8 padding positions are not shown
        "target  i␣cat.[EOS]\n"  # each position predicts the next token; '.' predicts [EOS]
        "        ^^^^^^^\n"
        "\n"
        "7 of the 8 input positions shown carry a loss\n"
        "legend: ^ has a loss (its target is above)\n"
    )


def test_mlm_rendering_literal():
    example = example_batch("mlm", "The cat sat on the mat.", options={"probability": 0.4}, seq_len=32, seed=36)
    lines = render_text(example, width=80).split("\n")
    assert lines[0] == f"mlm: {OBJECTIVES['mlm'].summary}"
    assert lines[1].startswith("options: probability=0.4, mask_fraction=0.8, random_fraction=0.1, unit='token', ")
    assert lines[1].endswith("; seq_len=32, seed=36")
    assert lines[2:] == [
        "attention: bidirectional",
        "",
        "input   TCe[MASK][MASK]at sat [MASK]n [MASK][MASK]e ma[MASK].[EOS]",
        "target   h ␣     c      t␣    o       t     h         t",
        "         R M     M      ^^    M       M     M         M",
        "",
        "9 of the 24 input positions shown carry a loss",
        "legend: ^ has a loss (its target is above); M masked (the mask token); R random replacement",
        "",
    ]
    # the same story in the batch: h -> C at 1, seven masks, t and ' ' selected but kept
    b, tok = example.batch, example.tokenizer
    assert tok.decode(b.input_ids[0, :24].tolist()) == "TCe[MASK][MASK]at sat [MASK]n [MASK][MASK]e ma[MASK].[EOS]"
    assert tok.decode(b.labels[0][b.labels[0] != IGNORE_INDEX].tolist()) == "h ct otht"
    selected = (b.labels[0] != IGNORE_INDEX).nonzero().flatten().tolist()
    assert selected == [1, 3, 4, 6, 7, 12, 15, 16, 21]
    assert (b.input_ids[0, selected] == tok.vocab.mask_id).tolist() == [
        False,
        True,
        True,
        False,
        False,
        True,
        True,
        True,
        True,
    ]


def test_long_rows_wrap_at_the_width():
    example = example_batch("clm", "abcdefghij" * 3, seq_len=40)
    lines = render_text(example, width=20).split("\n\n")[1:3]
    assert lines[0].split("\n")[0] == "input   abcdefghijab"  # 8 columns of row name, then 12 tokens
    assert lines[1].split("\n")[0] == "input   cdefghijabcd"


def test_sentence_pairs_show_segments_and_the_sentence_label():
    text = render_text(example_batch("nsp", seq_len=48, seed=2), width=200)
    segment = next(line for line in text.split("\n") if line.startswith("segment "))
    assert re.fullmatch(r"segment  A+B+", segment)
    assert re.search(r"^sentence label \(the target of the sentence head\): [01]$", text, re.M)


def test_plain_text_is_the_coloured_text_without_colours():
    example = example_batch("mlm", "The cat sat on the mat.", options={"probability": 0.4}, seq_len=32, seed=36)
    plain, colour = render_text(example, width=80).split("\n"), render_text(example, color=True, width=80).split("\n")
    assert "\x1b[7;31;4m[MASK]\x1b[0m" in colour[4] and "\x1b[1;33;4mC\x1b[0m" in colour[4]  # masked, replaced
    stripped = [ANSI.sub("", line) for line in colour]
    assert stripped[:6] == plain[:6]  # header, tokens and targets; the marks row is the plain stand-in
    assert not any("\x1b" in line for line in plain)


# ----------------------------------------------------------------------------- colours only on a terminal


@pytest.mark.parametrize(
    "tty, flags, env, coloured",
    [
        (False, [], {}, False),
        (True, [], {}, True),
        (True, ["--no-color"], {}, False),
        (True, [], {"NO_COLOR": "1"}, False),
    ],
)
def test_colours_only_on_a_terminal(tty, flags, env, coloured, tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.delenv("NO_COLOR", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: tty)
    assert main(["inspect", "--objective", "mlm", "--seq-len", "32", "--out", str(tmp_path / "x.png"), *flags]) == 0
    assert ("\x1b[" in capsys.readouterr().out) is coloured


# ----------------------------------------------------------------------------- encoder-decoder, whether registered or not


def test_encoder_decoder_example_shows_both_sides_and_three_panels():
    tok = ByteTokenizer(extra_special_tokens=[sentinel_token(i) for i in range(4)])
    objective = SpanCorruption(tok.vocab, noise_density=0.3, mean_noise_span_length=2.0)
    ids = torch.tensor([tok.encode("The cat sat on the mat")])
    batch = objective(ids, generator=torch.Generator().manual_seed(0))
    example = Example(
        name="t5",
        recipe=Recipe(SpanCorruption, "span corruption"),
        objective=objective,
        options={},
        batch=batch,
        tokenizer=tok,
        seq_len=ids.shape[1],
        seed=0,
    )
    text = render_text(example, width=200)
    lines = text.split("\n")
    encoder = next(line for line in lines if line.startswith("encoder "))
    decoder = next(line for line in lines if line.startswith("decoder "))
    target = next(line for line in lines if line.startswith("target "))
    assert "<extra_id_0>" in encoder and "<extra_id_0>" in decoder and target.rstrip().endswith("[EOS]")
    assert lines[2] == "attention: encoder bidirectional; decoder causal, and it sees every real encoder position"
    panels = {p.part: p for p in attention_panels(example)}
    n, m = _real_length(batch.attention_mask[0]), _real_length(batch.decoder_attention_mask[0])
    assert torch.equal(panels["self"].allowed, attention_mask_4d(batch, "self")[0, 0, :n, :n])
    assert torch.equal(panels["cross"].allowed, attention_mask_4d(batch, "cross")[0, 0, :m, :n])
    assert torch.equal(panels["decoder"].allowed, attention_mask_4d(batch, "decoder")[0, 0, :m, :m])
    assert panels["decoder"].queries.loss == (batch.labels[0, :m] != IGNORE_INDEX).tolist()
    assert all(role in ("kept", "sentinel", "special") for role in panels["self"].keys.roles)


# ----------------------------------------------------------------------------- the example itself


def test_same_seed_same_example_other_seed_other_example():
    a, b = example_batch("mlm", seed=3), example_batch("mlm", seed=3)
    assert torch.equal(a.batch.input_ids, b.batch.input_ids) and torch.equal(a.batch.labels, b.batch.labels)
    others = [example_batch("mlm", seed=s).batch.labels for s in (4, 5, 6)]
    assert any(not torch.equal(a.batch.labels, o) for o in others)


def test_options_reach_the_objective_and_the_length_option_follows_seq_len():
    example = example_batch("mlm", "The cat sat.", options={"unit": "word"})
    assert example.objective.unit == "word" and example.options["unit"] == "word"
    pair = example_batch("nsp", seq_len=40)
    assert pair.objective.max_seq_length == 40 and pair.batch.input_ids.shape[1] == 40


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "args, message",
    [
        (["--objective", "nope"], "invalid choice: 'nope'"),
        (["--objective", "mlm", "--probability", "3"], "probability must lie in (0, 1], got 3.0"),
        (["--objective", "clm", "--unit", "word"], "the options of --objective clm are: --document-masking"),
        (["--objective", "nsp", "--text", "One sentence only."], "two sentences or more"),
        (["--objective", "clm", "--seq-len", "0"], "must be a positive integer"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["inspect", *args, "--out", str(tmp_path / "x.png")])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_api_errors_name_the_argument():
    with pytest.raises(ValueError, match="objective must be one of 'clm', .*, got 'nope'"):
        example_batch("nope")
    with pytest.raises(
        ValueError, match=r"unknown option\(s\) 'bogus' for objective 'mlm'; valid options: probability"
    ):
        example_batch("mlm", options={"bogus": 1})
    with pytest.raises(ValueError, match="seq_len must be a positive int, got 0"):
        example_batch("clm", seq_len=0)
    with pytest.raises(ValueError, match="text must hold some non-whitespace"):
        example_batch("clm", "   ")


def test_without_matplotlib_the_text_is_printed_and_the_reason_given(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert main(["inspect", "--objective", "clm", "--seq-len", "16", "--out", str(tmp_path / "x.png")]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("clm: ") and "pip install matplotlib" in captured.err
    assert not (tmp_path / "x.png").exists()
