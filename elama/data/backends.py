"""Encoder backends of offline tokenization: tiktoken (the reference) and fastokens (same ids,
~5x faster), the probe that proves a backend equal to the reference before a run writes anything,
the cached tokenizer.json fastokens loads, and the memory guard that recycles a growing encoder.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import tempfile

from elama.tokenizer import (MAX_WHITESPACE_RUN_CHARS, Llama3Tokenizer, load_tokenizer,
                             special_token_names)

logger = logging.getLogger(__name__)

BACKENDS = ("fastokens", "tiktoken")
DEFAULT_BACKEND = "fastokens"
# fastokens' resident memory was seen to plateau ~80 MB above its loaded size over 3M distinct
# words (its piece cache); past this growth the encoder is rebuilt, so a long stream stays bounded.
MAX_RSS_GROWTH_BYTES = 512 << 20
RSS_CHECK_EVERY_CHARS = 64 << 20
# Bump when the tokenizer.json recipe changes: old cache files are then ignored, never trusted.
_JSON_RECIPE = "hf-tiktoken-converter-1"


class BackendError(ValueError):
    """A backend that is missing, unknown or does not encode exactly as the reference."""


def probe_texts() -> list[str]:
    """Where a BPE reimplementation can drift from tiktoken: long words, whitespace runs (past the
    reference's own long-run path too), CJK and emoji, Llama 3's special tokens as plain text,
    contractions in any case, digit runs, punctuation absorbing newlines."""
    specials = "".join(special_token_names()[:12]) + "<|reserved_special_token_250|>"
    return [
        "Donaudampfschifffahrtsgesellschaftskapitänsmützenhalterung" * 40, "x" * 50_000,
        "ß" * 3_000, "9" * 4_001, "a" + " " * 2_000 + "b", " " * 1_000, "\t" * 300 + "x",
        "a" + " " * (MAX_WHITESPACE_RUN_CHARS + 7) + "b", "end" + " " * 5_000,
        "\n" * 300 + "end", "  \r\n\r\n  x \u3000\u00a0 y\u2028z", "tabs\tand\u00a0nbsp\u3000",
        "東京都渋谷区のお店で買い物をしました。价格很便宜！한국어 텍스트도 있어요",
        "emoji 😀👍🏽👩‍👩‍👧 family", "мир Привет ॐ नमः", specials, f"chat {specials} tail",
        "I'M HE'S we'Ll they'RE won't", "mixed 123456789 digits 3.14159 1,000,000",
        "!!!\n\n...\r\n??", "Grüße aus Köln – Größe 42, Farbe: rot; Ça coûte 19,99 €",
        "<html><body class=\"x\">&nbsp;</body></html>\n\t\t  ",
    ]


def check_backend(encoder, reference: Llama3Tokenizer) -> None:
    """Refuse a backend whose ids differ from the reference's on any probe text."""
    for i, text in enumerate(probe_texts()):
        want = bytes(memoryview(reference.encode_to_buffer(text)).cast("B"))
        got = bytes(memoryview(encoder.encode_to_buffer(text)).cast("B"))
        if got != want:
            at = next((k for k in range(0, min(len(got), len(want)), 4)
                       if got[k:k + 4] != want[k:k + 4]), min(len(got), len(want))) // 4
            raise BackendError(
                f"backend {encoder.name} {encoder.version} encodes probe text {i} ({text[:40]!r}"
                f", {len(text)} characters) differently from tiktoken: {len(got) // 4} ids vs "
                f"{len(want) // 4}, first difference at id {at}. Nothing was written; run with "
                "--backend tiktoken (the reference) and report the version")


class TiktokenEncoder:
    """The reference: Llama3Tokenizer's own tiktoken path."""
    name = "tiktoken"

    def __init__(self, tokenizer: Llama3Tokenizer):
        self.version = _dist_version("tiktoken")
        self.encode_to_buffer = tokenizer.encode_to_buffer
        self.bos_id, self.eos_id = tokenizer.bos_id, tokenizer.eos_id


class FastokensEncoder:
    """fastokens over the tokenizer.json that transformers' TikTokenConverter makes from the same
    ranks; special-token text stays ordinary text (split_special_tokens). Texts it fails on (a
    regex resource limit) fall back to the reference, so the output is the reference's."""
    name = "fastokens"

    def __init__(self, tokenizer: Llama3Tokenizer, json_path: str):
        self.version = _dist_version("fastokens")
        self.tokenizer, self.json_path = tokenizer, json_path
        self.bos_id, self.eos_id = tokenizer.bos_id, tokenizer.eos_id
        self.fallbacks = self.recycles = 0
        self._load()

    def _load(self) -> None:
        import fastokens

        self._encode = fastokens.Tokenizer.from_file(self.json_path).encode_batch_flat
        self._chars, self._base_rss = 0, rss_bytes()

    def __getstate__(self):  # spawned workers reload from the files, not a pickled Rust object
        return {"tokenizer": self.tokenizer, "json_path": self.json_path}

    def __setstate__(self, state):
        self.__init__(state["tokenizer"], state["json_path"])

    def encode_to_buffer(self, text: str):
        """Ids as native uint32 bytes. Raises UnicodeEncodeError on lone surrogates, like the
        reference."""
        self._chars += len(text)
        if self._chars >= RSS_CHECK_EVERY_CHARS:
            self._maybe_recycle()
        try:
            return self._encode([text], add_special_tokens=False, split_special_tokens=True)[0]
        except UnicodeEncodeError:
            raise
        except Exception as e:  # noqa: BLE001 (any engine failure: the reference decides)
            self.fallbacks += 1
            logger.warning("fastokens failed on a %d-character text (%s); encoded with tiktoken",
                           len(text), e)
            return self.tokenizer.encode_to_buffer(text)

    def _maybe_recycle(self) -> None:
        self._chars = 0
        if rss_bytes() - self._base_rss > MAX_RSS_GROWTH_BYTES:
            self._encode = None  # drop the old engine before loading the new one
            self.recycles += 1
            self._load()


def rss_bytes() -> int:
    """This process's resident set size now (Linux /proc; 0 elsewhere: no recycling)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def cache_dir() -> str:
    """ELAMA_CACHE_DIR, else $XDG_CACHE_HOME/elama, else ~/.cache/elama."""
    root = os.environ.get("ELAMA_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "elama")
    return os.path.join(root, "tokenizers")


def cache_path(tokenizer: Llama3Tokenizer) -> str:
    import transformers

    key = hashlib.sha256(f"{tokenizer.sha256}:{_JSON_RECIPE}:{transformers.__version__}"
                         .encode()).hexdigest()[:24]
    return os.path.join(cache_dir(), f"llama3-{key}.tokenizer.json")


def fastokens_json(tokenizer: Llama3Tokenizer, *, rebuild: bool = False) -> str:
    """Path of the tokenizer.json for `tokenizer`, made once (~10 s) and cached by the sha256 of
    tokenizer.model, the recipe and transformers' version; written under a temporary name and
    renamed, so concurrent workers or array tasks never read a partial file."""
    path = cache_path(tokenizer)
    directory = os.path.dirname(path)
    if os.path.isfile(path) and not rebuild:
        return path
    from elama.convert.hf_tokenizer import build_hf_tokenizer

    try:  # the directory first: an unwritable cache fails before the ~10 s conversion
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(build_hf_tokenizer(tokenizer).to_str())
        os.chmod(tmp, 0o644)  # a shared cache: mkstemp's 0600 would lock other users out
        os.replace(tmp, path)
    except OSError as e:
        raise BackendError(f"cannot write fastokens' tokenizer.json cache in {directory} ({e}): "
                           "set ELAMA_CACHE_DIR to a writable directory, or run with "
                           "--backend tiktoken") from None
    logger.info("cached fastokens' tokenizer.json for %s at %s", tokenizer.model_path, path)
    return path


def build_encoder(tokenizer: Llama3Tokenizer | None, backend: str = DEFAULT_BACKEND):
    """The encoder of `backend` for `tokenizer`, proven equal to tiktoken on the probe set; one
    per process and tokenizer (fastokens loads in ~3 s; forked workers inherit it)."""
    check_name(backend)
    return _build_encoder(tokenizer or load_tokenizer(), backend)


@functools.lru_cache(maxsize=4)
def _build_encoder(tokenizer: Llama3Tokenizer, backend: str):
    if backend == "tiktoken":
        return TiktokenEncoder(tokenizer)
    try:
        import fastokens  # noqa: F401
    except ImportError:
        raise BackendError("--backend fastokens needs the fastokens package (pip install "
                           "fastokens==0.3.5), or run with --backend tiktoken") from None
    path = fastokens_json(tokenizer)
    try:
        encoder = FastokensEncoder(tokenizer, path)
        check_backend(encoder, tokenizer)
    except Exception as e:  # noqa: BLE001 (a damaged cache file: rebuild it once, then decide)
        logger.warning("fastokens' cached tokenizer.json failed (%s); rebuilding it", e)
        encoder = FastokensEncoder(tokenizer, fastokens_json(tokenizer, rebuild=True))
        check_backend(encoder, tokenizer)
    return encoder


def check_name(backend: str) -> None:
    if backend not in BACKENDS:
        raise BackendError(f"backend={backend!r}: expected one of {', '.join(BACKENDS)}")


def backend_record(backend: str) -> dict:
    """What a manifest records of the backend (the ids never depend on it)."""
    return {"backend": backend, "version": _dist_version(backend)}
