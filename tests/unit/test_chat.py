"""Chat rendering equals the exported tokenizer's apply_chat_template; the loss mask covers every
answer token (assistant content and its <|eot_id|>) and nothing else."""
from __future__ import annotations

import re

import pytest

from elama.data.sft.chat import (ChatFields, ChatRecordError, format_masked, record_messages,
                                 render)
from elama.tokenizer import load_tokenizer

CONVERSATIONS = {
    "single": [{"role": "user", "content": "Is a 65W USB-C charger enough for a 13\" laptop?"},
               {"role": "assistant", "content": "Yes, for most 13-inch laptops."}],
    "system_multi_turn": [
        {"role": "system", "content": "You are a shopping assistant.\n"},
        {"role": "user", "content": "Find running shoes under $80."},
        {"role": "assistant", "content": "  Here are three options:\n1. A\n2. B\n3. C  "},
        {"role": "user", "content": "Which is lightest?"},
        {"role": "assistant", "content": "B, at 210 g."}],
    "multilingual": [
        {"role": "user", "content": "この商品の素材は何ですか？ ¿Y el color? Welche Größe?"},
        {"role": "assistant", "content": "綿100%です。Rojo. Größe M. 😀"},
        {"role": "user", "content": "Merci !"},
        {"role": "assistant", "content": "De rien — bonne journée."}],
}


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def hf_tok(tok, tmp_path_factory):
    from transformers import AutoTokenizer

    from elama.convert.hf_tokenizer import write_hf_tokenizer

    out = tmp_path_factory.mktemp("hf_tok")
    write_hf_tokenizer(out, tok, model_max_length=8192)
    return AutoTokenizer.from_pretrained(str(out))


def _template_ids(hf_tok, messages, **kwargs) -> list[int]:
    out = hf_tok.apply_chat_template(messages, tokenize=True, **kwargs)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_render_equals_apply_chat_template(name, tok, hf_tok):
    messages = CONVERSATIONS[name]
    assert render(tok, messages).ids == _template_ids(hf_tok, messages)


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_mask_is_exactly_the_answer_tokens(name, tok, hf_tok):
    """Independently of render: each assistant turn's tokens are what the template adds after
    the prompt that ends in an open assistant header (the generation prompt)."""
    messages = CONVERSATIONS[name]
    rendered = render(tok, messages)
    want = [0] * len(rendered.ids)
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(_template_ids(hf_tok, messages[:k], add_generation_prompt=True))
        end = len(_template_ids(hf_tok, messages[:k + 1]))
        want[start:end] = [1] * (end - start)
    assert rendered.mask == want
    answers = [m["content"].strip() for m in messages if m["role"] == "assistant"]
    spans = format_masked(tok, rendered).split("[[")[1:]
    assert [s.split("]]")[0] for s in spans] == [a + "<|eot_id|>" for a in answers]


def test_prints_a_rendered_example_with_its_mask(tok, capsys):
    rendered = render(tok, CONVERSATIONS["system_multi_turn"])
    text = format_masked(tok, rendered)
    with capsys.disabled():
        print("\nrendered, trained tokens in [[...]]:\n" + text)
        print("mask:", "".join(map(str, rendered.mask)))
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n")
    assert "[[Here are three options:\n1. A\n2. B\n3. C<|eot_id|>]]" in text
    assert "<|start_header_id|>assistant<|end_header_id|>\n\n[[B, at 210 g.<|eot_id|>]]" in text
    # the template's headers and the user/system turns are never trained
    spans = re.findall(r"\[\[(.*?)\]\]", text, flags=re.S)
    assert len(spans) == 2
    assert not any(s in span for span in spans for s in ("<|start_header_id|>", "Find running",
                                                        "shopping assistant", "lightest"))


def test_shopbench_row_becomes_user_and_answer(tok, hf_tok):
    row = {"input_field": "Which category fits 'trail shoes'?\n0. Books\n1. Footwear\nAnswer:",
           "output_field": "1", "task": "category_mc", "area": "concepts"}
    messages = record_messages(row, ChatFields())
    assert messages == [{"role": "user", "content": row["input_field"]},
                        {"role": "assistant", "content": "1"}]
    rendered = render(tok, messages)
    assert rendered.ids == _template_ids(hf_tok, messages)
    assert [t for t, m in zip(rendered.ids, rendered.mask) if m] == tok.encode("1") + [tok.eot_id]


@pytest.mark.parametrize("messages, reason", [
    ([{"role": "assistant", "content": "hi"}], "bad_role_order"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "bad_role_order"),
    ([{"role": "user", "content": "a"}], "bad_role_order"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": " \n"}], "empty_answer"),
    ([{"role": "system", "content": "s"}, {"role": "system", "content": "s"},
      {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "bad_role_order"),
])
def test_bad_conversations_are_rejected_with_a_reason(messages, reason, tok):
    with pytest.raises(ChatRecordError) as e:
        render(tok, messages)
    assert e.value.reason == reason


def test_too_long_rejects_or_truncates(tok):
    messages = CONVERSATIONS["system_multi_turn"]
    full = render(tok, messages)
    with pytest.raises(ChatRecordError, match="too_long"):
        render(tok, messages, max_len=len(full.ids) - 1)
    cut = render(tok, messages, max_len=len(full.ids) - 3, truncation="truncate")
    assert cut.truncated and cut.ids == full.ids[:-3] and cut.mask == full.mask[:-3]
    first_answer = full.mask.index(1)
    with pytest.raises(ChatRecordError, match="no answer token"):
        render(tok, messages, max_len=first_answer, truncation="truncate")
