"""elama.tokenizer against tiktoken and the Llama 3 conventions it must reproduce exactly."""
from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest
import tiktoken
from tiktoken.load import load_tiktoken_bpe

from elama.tokenizer import (LLAMA3_PATTERN, MAX_WHITESPACE_RUN_CHARS, Llama3Tokenizer,
                             default_model_path, load_mergeable_ranks, load_tokenizer,
                             whitespace_run_pattern)

TRICKY = [
    "Hello, world!", "Grüße aus Köln – Größe 42, Farbe: rot", "Ça coûte 19,99 € — très bien",
    "日本語のテキストと中文混合", "emoji 😀👍🏽👩‍👩‍👧 family", "line one\r\nline two\r\n\r\n",
    "tabs\tand\u00a0nbsp\u3000ideographic", "x" * 50_000, "9" * 4_001, "won't we'll they're",
    "<|begin_of_text|> <|eot_id|> are plain text here", "   leading and trailing   ",
    "a" + " " * 2_000 + "b", "\n" * 300 + "end", "мир Привет", "ॐ नमः", "mixed 123456789 digits",
]


@pytest.fixture(scope="module")
def tok() -> Llama3Tokenizer:
    return load_tokenizer()


@pytest.fixture(scope="module")
def reference() -> tiktoken.Encoding:
    """An independent tiktoken Encoding: tiktoken's own rank loader, no special tokens."""
    return tiktoken.Encoding("ref", pat_str=LLAMA3_PATTERN,
                             mergeable_ranks=load_tiktoken_bpe(default_model_path()),
                             special_tokens={})


def test_vocabulary_and_special_ids(tok):
    assert tok.vocab_size == 128256 and len(tok.mergeable_ranks) == 128000
    assert (tok.bos_id, tok.eos_id, tok.eot_id, tok.pad_id) == (128000, 128001, 128009, 128004)
    assert len(tok.special_tokens) == 256
    assert tok.special_tokens["<|start_header_id|>"] == 128006
    assert tok.special_tokens["<|python_tag|>"] == 128010
    assert tok.special_tokens["<|reserved_special_token_246|>"] == 128255
    with open(default_model_path(), "rb") as f:
        assert tok.sha256 == hashlib.sha256(f.read()).hexdigest()
    assert load_tokenizer() is tok  # cached per model file


@pytest.mark.parametrize("text", TRICKY)
def test_encode_matches_tiktoken(tok, reference, text):
    ids = tok.encode(text)
    assert ids == reference.encode_ordinary(text)
    assert np.frombuffer(tok.encode_to_buffer(text), np.uint32).tolist() == ids
    assert tok.encode(text, bos=True, eos=True) == [tok.bos_id, *ids, tok.eos_id]
    assert tok.decode(ids) == text


def test_special_token_text_is_never_special(tok):
    ids = tok.encode("<|eot_id|>")
    assert tok.eot_id not in ids and len(ids) > 1


def test_long_run_splitting_is_exact_on_random_text(tok, reference):
    """The split encoding equals tiktoken's whole-text encoding, with the run threshold lowered
    so that thousands of random texts exercise every case of the pattern around a cut."""
    alphabet = [" ", " ", "\t", "\u3000", "\xa0", "\x0b", "\x85", "\u2028", "\n", "\r", "a", "é",
                "Z", "1", "23", ".", "'", "s", "'s", "中", "😀", "-", "$"]
    rng = random.Random(0)
    for min_chars in (1, 2, 3, 5):
        pattern = whitespace_run_pattern(min_chars)
        for _ in range(2_000):
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
            assert tok.encode_with_long_runs(text, pattern) == reference.encode_ordinary(text), text


def test_long_whitespace_runs_at_real_threshold(tok, reference):
    """Runs past MAX_WHITESPACE_RUN_CHARS take the split path; where tiktoken still succeeds
    (below ~1M) the ids are identical; far past it (where tiktoken panics) it round-trips."""
    n = 3 * MAX_WHITESPACE_RUN_CHARS
    for text in ("x" + " " * n + "y", "x" + "\t" * n, " " * n + "\nz", "a. " + "\u3000" * n + "b"):
        assert tok.encode(text) == reference.encode_ordinary(text)
    no_space = "Größeabcdé" * 100_000  # one 1M-letter regex piece: tiktoken 0.14 copes
    assert tok.encode(no_space) == reference.encode_ordinary(no_space)
    huge = "start" + " " * 1_050_000 + "end"
    ids = tok.encode(huge)
    assert tok.decode(ids) == huge
    assert np.frombuffer(tok.encode_to_buffer(huge), np.uint32).tolist() == ids


def test_lone_surrogates(tok, reference):
    text = "broken \ud83d emoji"
    assert tok.encode(text) == reference.encode_ordinary(text)  # replaced, as tiktoken does
    with pytest.raises(UnicodeEncodeError):
        tok.encode_to_buffer(text)  # the dataset writer rejects such documents instead


def test_encode_dialog_matches_rendered_template(tok):
    messages = [{"role": "system", "content": "You are a shopping assistant."},
                {"role": "user", "content": "  Find red running shoes, size 42.\n"},
                {"role": "assistant", "content": "Here are three options: ..."}]
    rendered = "<|begin_of_text|>" + "".join(
        f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip()}<|eot_id|>"
        for m in messages)
    assert tok.encode_dialog(messages) == tok.model.encode(rendered, allowed_special="all")
    prompt = rendered + "<|start_header_id|>assistant<|end_header_id|>\n\n"
    assert tok.encode_dialog(messages, add_generation_prompt=True) == \
        tok.model.encode(prompt, allowed_special="all")
    with pytest.raises(ValueError, match="message 1"):
        tok.encode_dialog([messages[0], {"role": "customer", "content": "hi"}])


def test_megatron_adapter(tok):
    adapter = tok.megatron_adapter()
    assert (adapter.vocab_size, adapter.eod, adapter.pad, adapter.bos) == \
        (128256, 128001, 128004, 128000)
    assert adapter.unique_identifiers["sha256"] == tok.sha256
    assert adapter.detokenize(adapter.tokenize("ok then")) == "ok then"


def test_bad_model_file_names_file_and_line(tmp_path):
    bad = tmp_path / "tokenizer.model"
    bad.write_text("IQ== 0\nnot-base64!! 1\n")
    with pytest.raises(ValueError, match=r"tokenizer.model:2"):
        load_mergeable_ranks(str(bad))
    gap = tmp_path / "gap.model"
    gap.write_text("IQ== 0\nIg== 2\n")
    with pytest.raises(ValueError, match="without gaps"):
        Llama3Tokenizer(str(gap))
