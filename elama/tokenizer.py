"""The Llama 3 tokenizer on tiktoken: Meta's `tokenizer.model` BPE ranks, the 256 special tokens,
a content hash, exact encoding of arbitrarily long whitespace runs, Llama 3 chat encoding, and the
adapter megatron-core's GPTDataset takes as its tokenizer.
"""
from __future__ import annotations

import array
import binascii
import functools
import hashlib
import importlib.resources
import os
import re
from collections import OrderedDict
from typing import Iterable, Sequence

import tiktoken

# Llama 3's pre-tokenizer: contractions, letter runs with one leading non-letter, numbers of at most
# three digits, punctuation runs (absorbing following newlines), and whitespace.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
NUM_SPECIAL_TOKENS = 256
_NAMED_SPECIAL_TOKENS = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>",
    "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
)  # Meta's Llama 3.1 reference names; HF calls 128005 <|reserved_special_token_2|>, same ids
CHAT_ROLES = ("system", "user", "assistant", "ipython", "tool")

# tiktoken's regex engine (fancy_regex) overflows its backtracking stack on a run of about 1M
# whitespace characters that holds no newline and is followed by a non-space or the end of the
# text (the `\s+(?!\S)` alternative); measured with tiktoken 0.14. Runs of letters, digits,
# punctuation, CJK or emoji encode fine up to 4M characters. Runs of this length or more are
# encoded without the regex; 10x below the failure point.
MAX_WHITESPACE_RUN_CHARS = 100_000
# Unicode White_Space, the set `\s` means in tiktoken's (Rust) regex, minus the two newline
# characters the pattern treats specially ([\r\n]).
_WS_NO_NEWLINE = "\t\x0b\x0c \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_NO_SPECIAL: frozenset = frozenset()


def whitespace_run_pattern(min_chars: int) -> re.Pattern:
    """Maximal runs of at least `min_chars` newline-free whitespace characters."""
    return re.compile(f"[{_WS_NO_NEWLINE}]{{{min_chars},}}")


def default_model_path() -> str:
    """Meta's Llama 3 `tokenizer.model`, as shipped in the `llama-models` package."""
    path = importlib.resources.files("llama_models") / "llama3" / "tokenizer.model"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: install the `llama-models` package "
                                "or pass the path of a Llama 3 tokenizer.model")
    return str(path)


def special_token_names(num_special: int = NUM_SPECIAL_TOKENS) -> list[str]:
    """Llama 3's special tokens in id order; the unnamed ones are reserved_special_token_{2..}."""
    reserved = [f"<|reserved_special_token_{2 + i}|>"
                for i in range(num_special - len(_NAMED_SPECIAL_TOKENS))]
    return list(_NAMED_SPECIAL_TOKENS) + reserved


def load_mergeable_ranks(model_path: str) -> tuple[dict[bytes, int], str]:
    """Parse a tiktoken BPE file (`base64-token rank` per line): (ranks, sha256 of the file)."""
    with open(model_path, "rb") as f:
        content = f.read()
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            token_b64, rank = line.split()
            ranks[binascii.a2b_base64(token_b64, strict_mode=True)] = int(rank)
        except (ValueError, binascii.Error) as e:
            raise ValueError(f"{model_path}:{lineno}: expected `<base64 token> <rank>`, got "
                             f"{line[:80]!r} ({e}); is this a tiktoken tokenizer.model?") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{model_path}: ranks are not 0..{len(ranks) - 1} without gaps or "
                         "repeats; special token ids would collide")
    return ranks, hashlib.sha256(content).hexdigest()


@functools.lru_cache(maxsize=4)
def _cached(model_path: str, mtime_ns: int, size: int) -> "Llama3Tokenizer":
    return Llama3Tokenizer(model_path)


def load_tokenizer(model_path: str | None = None) -> "Llama3Tokenizer":
    """A shared Llama3Tokenizer per model file (immutable; loading costs ~0.2 s)."""
    path = os.path.abspath(model_path or default_model_path())
    st = os.stat(path)
    return _cached(path, st.st_mtime_ns, st.st_size)


class Llama3Tokenizer:
    """Llama 3 (and 3.1) tokenization; user text is always ordinary text, never special tokens."""

    def __init__(self, model_path: str | None = None):
        self.model_path = os.path.abspath(model_path or default_model_path())
        self.mergeable_ranks, self.sha256 = load_mergeable_ranks(self.model_path)
        num_base = len(self.mergeable_ranks)
        self.special_tokens = {tok: num_base + i for i, tok in enumerate(special_token_names())}
        self.pattern = LLAMA3_PATTERN
        self.name = "llama3-" + os.path.basename(self.model_path)
        self.vocab_size = num_base + NUM_SPECIAL_TOKENS
        self.bos_id = self.special_tokens["<|begin_of_text|>"]
        self.eos_id = self.special_tokens["<|end_of_text|>"]
        self.eot_id = self.special_tokens["<|eot_id|>"]
        self.eom_id = self.special_tokens["<|eom_id|>"]
        self.pad_id = self.special_tokens["<|finetune_right_pad_id|>"]
        self.start_header_id = self.special_tokens["<|start_header_id|>"]
        self.end_header_id = self.special_tokens["<|end_header_id|>"]
        self.model = tiktoken.Encoding(name=self.name, pat_str=self.pattern,
                                       mergeable_ranks=self.mergeable_ranks,
                                       special_tokens=self.special_tokens)
        self._core = self.model._core_bpe
        self._long_ws_run = whitespace_run_pattern(MAX_WHITESPACE_RUN_CHARS)

    def __getstate__(self):  # workers rebuild from the file rather than pickling 128k ranks
        return {"model_path": self.model_path, "sha256": self.sha256}

    def __setstate__(self, state):
        self.__init__(state["model_path"])
        if self.sha256 != state["sha256"]:
            raise ValueError(f"{self.model_path} changed while in use: sha256 {self.sha256} "
                             f"!= {state['sha256']}")

    # ---- encoding -------------------------------------------------------------------------
    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of `text` as ordinary text (`<|eot_id|>` in text is 7 tokens, never one)."""
        try:
            ids = self._encode_ordinary(text)
        except UnicodeEncodeError:  # lone surrogates: U+FFFD, as tiktoken does
            ids = self._encode_ordinary(
                text.encode("utf-16", "surrogatepass").decode("utf-16", "replace"))
        if bos:
            ids.insert(0, self.bos_id)
        if eos:
            ids.append(self.eos_id)
        return ids

    def encode_batch(self, texts: Iterable[str], bos: bool = False, eos: bool = False
                     ) -> list[list[int]]:
        # A plain loop: tiktoken's 8-thread batch encode is slower on 2 cores (bench/preprocess.py)
        return [self.encode(t, bos=bos, eos=eos) for t in texts]

    def encode_to_buffer(self, text: str):
        """Ordinary-text ids as a buffer of native uint32, without building Python ints (the
        dataset writer's hot path). Raises UnicodeEncodeError on lone surrogates."""
        if len(text) < MAX_WHITESPACE_RUN_CHARS:
            return self._core.encode_to_tiktoken_buffer(text, _NO_SPECIAL)
        return array.array("I", self._encode_ordinary(text))

    def _encode_ordinary(self, text: str) -> list[int]:
        if len(text) < MAX_WHITESPACE_RUN_CHARS:
            return self._core.encode_ordinary(text)
        return self.encode_with_long_runs(text, self._long_ws_run)

    def encode_with_long_runs(self, text: str, long_run: re.Pattern) -> list[int]:
        """Exact ordinary encoding that feeds tiktoken's regex no whitespace run `long_run` matches.

        Such a run R = text[s:e] (no newline; maximal, so text[s-1] is a newline or a non-space)
        followed by a non-space or the end is, in Llama 3's pattern, one piece text[s:e-1] by
        `\\s+(?!\\S)` (text[s:e] at the end), and s and that piece's end are piece boundaries. The
        regex has no look-behind, so the text on either side encodes alone exactly as in place; the
        piece itself goes straight to BPE. Runs ending in a newline are one `\\s*[\\r\\n]+` piece,
        which tiktoken handles (1.2M characters tested). Proven against direct encoding in the
        unit tests.
        """
        ids: list[int] = []
        pos = 0
        for m in long_run.finditer(text):
            start, end = m.span()
            if end < len(text) and text[end] in "\r\n":
                continue
            piece_end = end if end == len(text) else end - 1
            if piece_end > start:  # a one-character run before a non-space is no piece of its own
                ids += self._core.encode_ordinary(text[pos:start])
                ids += self._core.encode_single_piece(text[start:piece_end].encode("utf-8"))
                pos = piece_end
        ids += self._core.encode_ordinary(text[pos:])
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.model.decode([int(i) for i in ids], errors="replace")

    # ---- Llama 3 chat format --------------------------------------------------------------
    def encode_header(self, role: str) -> list[int]:
        """`<|start_header_id|>role<|end_header_id|>\\n\\n`."""
        return [self.start_header_id, *self.encode(role), self.end_header_id, *self.encode("\n\n")]

    def encode_dialog(self, messages: Sequence[dict], add_generation_prompt: bool = False
                      ) -> list[int]:
        """`<|begin_of_text|>` then per message its header, stripped content and `<|eot_id|>`;
        with `add_generation_prompt`, an open assistant header for the model to continue."""
        ids = [self.bos_id]
        for i, message in enumerate(messages):
            role, content = message.get("role"), message.get("content")
            if role not in CHAT_ROLES or not isinstance(content, str):
                raise ValueError(f"message {i}: expected {{'role': one of {CHAT_ROLES}, 'content': "
                                 f"str}}, got role={role!r}, content type "
                                 f"{type(content).__name__}")
            ids += self.encode_header("ipython" if role == "tool" else role)  # as Meta's format
            ids += self.encode(content.strip())
            ids.append(self.eot_id)
        if add_generation_prompt:
            ids += self.encode_header("assistant")
        return ids

    def megatron_adapter(self) -> "MegatronTokenizerAdapter":
        return MegatronTokenizerAdapter(self)


class MegatronTokenizerAdapter:
    """What megatron-core 0.16.1's GPTDataset reads from `config.tokenizer`: vocab_size (token
    dtype), eod (document boundaries for position/attention resets), pad (padding, masked from the
    loss), unique_identifiers (the dataset cache key). Duck-typed so this module needs no megatron.
    """

    def __init__(self, tokenizer: Llama3Tokenizer):
        self._tokenizer = tokenizer
        self.vocab_size = tokenizer.vocab_size
        self.eod = tokenizer.eos_id  # documents are written `<|begin_of_text|>...<|end_of_text|>`
        self.eos = tokenizer.eos_id
        self.bos = tokenizer.bos_id
        self.pad = tokenizer.pad_id
        self.unique_identifiers = OrderedDict(
            [("class", "Llama3Tokenizer"), ("name", tokenizer.name), ("sha256", tokenizer.sha256)])
        self.unique_description = str(dict(self.unique_identifiers))

    def tokenize(self, text: str) -> list[int]:
        return self._tokenizer.encode(text)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(ids)

    @property
    def vocab(self) -> dict:
        return {**{k.decode("utf-8", "replace"): v
                   for k, v in self._tokenizer.mergeable_ranks.items()},
                **self._tokenizer.special_tokens}

    @property
    def inv_vocab(self) -> dict:
        return {v: k for k, v in self.vocab.items()}
