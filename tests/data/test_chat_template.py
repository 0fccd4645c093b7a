"""lmobjectives.data.chat_template.tokenize_conversation: loss masks from how each part is rendered and tokenised, on tokenizers
built here (a Llama-3-style and a ChatML-style template, a tokenizer that merges across a boundary, the built-in
ChatML format of lmobjectives' own tokenizers); bad input; training end to end through the trainer."""

from __future__ import annotations

import json
import math
from itertools import groupby

import pytest

from lmobjectives.constants import IGNORE_INDEX
from lmobjectives.data.chat_template import (
    ASSISTANT,
    CHAT_TOKENS,
    COMPLETION,
    PROMPT,
    render_chatml,
    tokenize_conversation,
)
from lmobjectives.data.tokenizers import ByteTokenizer, load_tokenizer, train_tokenizer

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

LLAMA3_TEMPLATE = (  # the template of Meta-Llama-3-8B-Instruct
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CHATML_TEMPLATE = (  # Qwen2-style ChatML, without the default system message
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TEXTS = ["The cat sat on the mat.", "Hello there, how are you?", "I am fine, thank you.", "Be brief."] * 5
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hello there"},
    {"role": "assistant", "content": "I am fine."},
    {"role": "user", "content": "The cat?"},
    {"role": "assistant", "content": "On the mat."},
]


def _wrap(specials: tuple[str, ...], template: str, **tokens: str):
    hf = train_tokenizer(TEXTS, "bpe", 300, extra_special_tokens=specials)
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=hf.tokenizer, **tokens)
    tok.chat_template = template
    return tok


@pytest.fixture(scope="module")
def llama3():
    """Byte-level BPE with Llama 3's chat tokens; pad == eos == <|eot_id|> (a common fine-tuning setup)."""
    specials = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
    return _wrap(
        specials, LLAMA3_TEMPLATE, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token="<|eot_id|>"
    )


@pytest.fixture(scope="module")
def chatml():
    specials = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
    return _wrap(specials, CHATML_TEMPLATE, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def runs(tok, out, learned: bool = True) -> list[str]:
    """The decoded runs of consecutive learned (or not learned) tokens."""
    flags = [label != IGNORE_INDEX for label in out.labels]
    groups, i = [], 0
    for flag, group in groupby(flags):
        n = len(list(group))
        if flag == learned:
            groups.append(tok.decode(out.input_ids[i : i + n]))
        i += n
    return groups


# ----------------------------------------------------------------------------- masks on two chat templates


def test_llama3_template_masks_exactly_the_answers_and_their_eot(llama3):
    out = tokenize_conversation(CONVERSATION, llama3)
    assert runs(llama3, out) == ["I am fine.<|eot_id|>", "On the mat.<|eot_id|>"]
    assert runs(llama3, out, learned=False) == [
        (
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHello there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        ),
        "<|start_header_id|>user<|end_header_id|>\n\nThe cat?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    ]
    whole = llama3.encode(llama3.apply_chat_template(CONVERSATION, tokenize=False), add_special_tokens=False)
    assert out.input_ids == whole and out.boundary_merges == 0  # the parts tokenise back to the whole
    assert all(label in (IGNORE_INDEX, token) for label, token in zip(out.labels, out.input_ids))  # not shifted
    eot = llama3.convert_tokens_to_ids("<|eot_id|>")
    assert eot == llama3.pad_token_id  # pad == eos, and the end of each turn is still learned:
    assert [t for t, label in zip(out.input_ids, out.labels) if label == eot] == [eot, eot]


def test_chatml_template_learns_im_end_but_not_the_newline_after_it(chatml):
    out = tokenize_conversation(CONVERSATION, chatml)
    assert runs(chatml, out) == ["I am fine.<|im_end|>", "On the mat.<|im_end|>"]
    assert chatml.decode(out.input_ids[-1:]) == "\n" and out.labels[-1] == IGNORE_INDEX
    assert chatml.decode(out.input_ids) == chatml.apply_chat_template(CONVERSATION, tokenize=False)
    assert out.boundary_merges == 0 and out.boundaries == 8  # 1 + 1 + 3 + 1 + 3 non-empty parts, minus one


@pytest.mark.parametrize("template", ["llama3", "chatml"])
def test_train_on_completion_and_all(template, request):
    tok = request.getfixturevalue(template)
    end = "<|eot_id|>" if template == "llama3" else "<|im_end|>"
    completion = tokenize_conversation(CONVERSATION, tok, train_on="completion")
    assert runs(tok, completion) == [f"On the mat.{end}"]
    everything = tokenize_conversation(CONVERSATION, tok, train_on="all")
    assert everything.labels == everything.input_ids
    assistant = tokenize_conversation(CONVERSATION, tok)
    assert assistant.input_ids == completion.input_ids == everything.input_ids
    assert assistant.roles == completion.roles  # train_on changes labels, never tokens or roles
    learned = [r for r, label in zip(assistant.roles, assistant.labels) if label != IGNORE_INDEX]
    assert set(learned) == {ASSISTANT, COMPLETION} and learned[-1] == COMPLETION


def test_conversational_prompt_completion_learns_the_completion_turns(chatml):
    record = {"prompt": CONVERSATION[:3] + CONVERSATION[3:4], "completion": CONVERSATION[4:]}
    out = tokenize_conversation(record, chatml, train_on="completion")
    assert runs(chatml, out) == ["On the mat.<|im_end|>"]
    assert out.input_ids == tokenize_conversation(CONVERSATION, chatml).input_ids
    assert runs(chatml, tokenize_conversation(record, chatml)) == ["I am fine.<|im_end|>", "On the mat.<|im_end|>"]


def test_plain_prompt_completion_is_text_plus_eos(chatml):
    out = tokenize_conversation({"prompt": "The cat sat", "completion": " on the mat."}, chatml)
    assert chatml.decode(out.input_ids) == "The cat sat on the mat.<|im_end|>"
    assert runs(chatml, out) == [" on the mat.<|im_end|>"]
    assert out.roles[-1] == COMPLETION and out.input_ids[-1] == chatml.eos_token_id


# ----------------------------------------------------------------------------- merges across a boundary


@pytest.fixture(scope="module")
def merging():
    """Character BPE without a pre-tokenizer and one merge, ':' + 'S': the assistant header 'assistant:' and an
    answer that starts with 'S' become one token ':S' when the whole conversation is tokenised."""
    chars = sorted(set("user:Hi assistant:Sure"))
    vocab = {c: i for i, c in enumerate(chars)}
    vocab[":S"] = len(vocab)
    model = tokenizers.models.BPE(vocab=vocab, merges=[(":", "S")])
    inner = tokenizers.Tokenizer(model)
    inner.add_special_tokens(["<|end|>"])
    inner.decoder = tokenizers.decoders.Fuse()  # decode by concatenation
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=inner, eos_token="<|end|>")
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] + ':' + m['content'] + '<|end|>' }}{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    return tok


MERGED = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Sure"}]


def test_a_merge_across_the_boundary_is_counted_and_labels_stay_exact(merging):
    whole = merging.encode("user:Hi<|end|>assistant:Sure<|end|>", add_special_tokens=False)
    assert ":S" in merging.convert_ids_to_tokens(whole)  # the tokenizer does merge across the boundary
    out = tokenize_conversation(MERGED, merging)
    assert out.boundary_merges == 1 and out.boundaries == 2  # user part | header | answer: one boundary crossed
    assert out.input_ids != whole and len(out.input_ids) == len(whole) + 1
    assert runs(merging, out) == ["Sure<|end|>"]  # exact: the answer's own tokens, never ':S' half-learned
    assert merging.convert_ids_to_tokens(out.input_ids)[-6:] == [":", "S", "u", "r", "e", "<|end|>"]
    # a response-template search for the header's tokens in the whole tokenisation finds nothing to mask from
    header = merging.encode("assistant:", add_special_tokens=False)
    assert not any(whole[i : i + len(header)] == header for i in range(len(whole)))


def test_on_merge_error_refuses_a_merged_conversation(merging):
    with pytest.raises(
        ValueError, match=r"merges across a part boundary.*1 of 2 boundaries, first between '.*assistant:' and 'Sure"
    ):
        tokenize_conversation(MERGED, merging, on_merge="error")
    tokenize_conversation(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "ush"}], merging, on_merge="error"
    )  # no merge, no error


# ----------------------------------------------------------------------------- the built-in ChatML format


def test_byte_tokenizer_uses_the_built_in_chatml_format():
    tok = ByteTokenizer(extra_special_tokens=CHAT_TOKENS)
    start, end = tok.vocab.size - 2, tok.vocab.size - 1
    out = tokenize_conversation([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}], tok)
    assert out.input_ids == [start, *b"user\nHi", end, 10, start, *b"assistant\nYo", end, 10]
    assert out.roles == [PROMPT] * 10 + [PROMPT] * 11 + [COMPLETION] * 3 + [PROMPT]
    assert out.labels == [IGNORE_INDEX] * 21 + [ord("Y"), ord("o"), end, IGNORE_INDEX]
    assert tok.decode(out.input_ids) == render_chatml(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    )


def test_hf_tokenizer_of_the_package_uses_chatml_with_its_added_tokens():
    tok = load_tokenizer("bpe:300", texts=TEXTS, extra_special_tokens=CHAT_TOKENS)
    out = tokenize_conversation(CONVERSATION, tok)
    learned = [t for t, label in zip(out.input_ids, out.labels) if label != IGNORE_INDEX]
    assert tok.decode(learned) == "I am fine.<|im_end|>On the mat.<|im_end|>"
    assert tok.decode(out.input_ids) == render_chatml(CONVERSATION) and out.boundary_merges == 0


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "messages, error, match",
    [
        ([{"role": "user", "content": "Hi"}], ValueError, r"messages has no assistant turn \(roles \['user'\]\)"),
        (
            [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Yo"}],
            ValueError,
            r"messages\[1\]\['role'\] must be one of 'system', 'user', 'assistant', 'tool', got 'bot'",
        ),
        (
            [{"role": "user", "content": 3}, {"role": "assistant", "content": "Yo"}],
            TypeError,
            r"messages\[0\]\['content'\] must be a str",
        ),
        ([], ValueError, "messages is empty"),
        ("Hi", TypeError, "messages must be a list of messages"),
        ([("user", "Hi")], TypeError, r"messages\[0\] must be a dict"),
        (
            {"text": "Hi"},
            ValueError,
            r"messages must have a 'messages' list or 'prompt' and 'completion' fields, got keys \['text'\]",
        ),
        (
            {"messages": [{"role": "user", "content": "Hi"}]},
            ValueError,
            r"messages\['messages'\] has no assistant turn",
        ),
        (
            {"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "user", "content": "Yo"}]},
            ValueError,
            r"messages\['completion'\] has no assistant turn",
        ),
    ],
)
def test_bad_messages_name_the_argument(chatml, messages, error, match):
    with pytest.raises(error, match=match):
        tokenize_conversation(messages, chatml)


def test_a_tokenizer_without_a_chat_template_is_refused_when_messages_are_given(chatml):
    bare = transformers.PreTrainedTokenizerFast(tokenizer_object=chatml.backend_tokenizer, eos_token="<|im_end|>")
    assert not getattr(bare, "chat_template", None)
    with pytest.raises(ValueError, match=rf"tokenizer \({type(bare).__name__}\) has no chat_template"):
        tokenize_conversation(CONVERSATION, bare)
    out = tokenize_conversation({"prompt": "Hi", "completion": " there"}, bare)  # plain text needs no template
    assert (
        bare.decode([t for t, label in zip(out.input_ids, out.labels) if label != IGNORE_INDEX]) == " there<|im_end|>"
    )


def test_own_tokenizers_without_the_chat_tokens_are_refused():
    with pytest.raises(
        ValueError, match=r"lacks the special tokens \['<\|im_start\|>', '<\|im_end\|>'\].*extra_special_tokens"
    ):
        tokenize_conversation(CONVERSATION, ByteTokenizer())
    with pytest.raises(TypeError, match="tokenizer must be a transformers tokenizer"):
        tokenize_conversation(CONVERSATION, "byte")


def test_bad_options_name_the_argument(chatml):
    with pytest.raises(ValueError, match=r"train_on must be one of 'assistant', 'completion', 'all', got 'prompt'"):
        tokenize_conversation(CONVERSATION, chatml, train_on="prompt")
    with pytest.raises(ValueError, match=r"on_merge must be one of 'split', 'error', got 'ignore'"):
        tokenize_conversation(CONVERSATION, chatml, on_merge="ignore")


def test_a_template_that_rewrites_earlier_turns_is_refused(chatml):
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=chatml.backend_tokenizer, eos_token="<|im_end|>")
    tok.chat_template = (
        "{% for m in messages %}{{ m['content'] }}{% endfor %}{{ messages | length }}"  # count at the end
    )
    with pytest.raises(ValueError, match=r"not prefix-stable: rendering messages\[:2\]"):
        tokenize_conversation(CONVERSATION[1:3], tok)


# ----------------------------------------------------------------------------- training end to end


@pytest.mark.slow
def test_trains_on_a_chat_jsonl_with_a_saved_tokenizer(tmp_path, monkeypatch):
    """``lmobj train --objective sft --data chat.jsonl --tokenizer PATH`` as a TrainConfig: the loss falls."""
    from lmobjectives.data.chat import builtin_chat, write_chat
    from lmobjectives.objectives.sft import SupervisedFineTuning
    from lmobjectives.recipes import OBJECTIVES, Recipe
    from lmobjectives.recipes.step_losses import sft_step_loss
    from lmobjectives.training import TrainConfig, train

    recipe = Recipe(SupervisedFineTuning, "sft", data="conversations", special_tokens=CHAT_TOKENS, loss=sft_step_loss)
    monkeypatch.setitem(OBJECTIVES, "sft", recipe)
    data = tmp_path / "chat.jsonl"
    write_chat(builtin_chat()[:60], data)
    tok_path = tmp_path / "tok"
    load_tokenizer("bpe:300", texts=TEXTS).save(tok_path)  # a saved tokenizer without the chat tokens: they are added
    config = TrainConfig(
        objective="sft",
        data=str(data),
        tokenizer=str(tok_path),
        out=str(tmp_path / "run"),
        d_model=48,
        n_layers=1,
        n_heads=2,
        d_ff=96,
        seq_len=96,
        batch_size=8,
        steps=40,
        warmup_steps=5,
        lr=3e-3,
        log_every=10,
        save_every=0,
        progress=False,
    )
    result = train(config)
    rows = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    first, last = rows[0]["loss"], rows[-1]["loss"]
    assert math.isfinite(last) and last < first - 0.5, (first, last)
    assert {"token_mean_loss", "sequence_mean_loss", "conversations"} <= set(rows[0])
