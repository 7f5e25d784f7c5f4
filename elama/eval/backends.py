"""Model backends for evaluation, one interface: token log-probabilities, prompt encoding and greedy
generation. HFBackend runs a Hugging Face directory with transformers; MegatronBackend runs an
elama trainer or converted checkpoint at any tp/pp through elama.scoring (results on every rank).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from elama.eval.shopbench import EvalInputError

logger = logging.getLogger(__name__)

LogProbs = list[tuple[np.ndarray, np.ndarray]]  # per sequence: (log p of ids[1:], is argmax)


def model_kind(path) -> str:
    """"hf" for a Hugging Face directory, "elama" for a checkpoint; EvalInputError otherwise."""
    p = Path(path)
    if (p / "config.json").is_file():
        return "hf"
    if (p / "meta.json").is_file() or (p / "latest_checkpointed_iteration.txt").is_file():
        return "elama"
    raise EvalInputError(f"{p}: not a model directory: no config.json (a Hugging Face model) and "
                         "no meta.json or latest_checkpointed_iteration.txt (an elama checkpoint "
                         "or run directory)")


def open_backend(path, overrides: Sequence[str] = (), *, batch_size: int = 8, seed: int = 0):
    torch.manual_seed(seed)
    if model_kind(path) == "hf":
        return HFBackend(path, batch_size=batch_size)
    return MegatronBackend(path, overrides, batch_size=batch_size, seed=seed)


class HFBackend:
    """A transformers causal LM in float32 on CPU (or the first GPU), eval mode."""
    is_output = True

    def __init__(self, path, *, batch_size: int = 8):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path, self.batch_size = Path(path), batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).to(device)
        self.model.eval()
        self.device = device
        self.vocab_size = self.model.config.vocab_size
        self.eos_id = self.tokenizer.eos_token_id
        self.bos_id = self.tokenizer.bos_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def encode_prompt(self, text: str, chat: bool) -> list[int]:
        if chat:
            if not self.tokenizer.chat_template:
                raise EvalInputError(f"{self.path}: the tokenizer has no chat template; drop "
                                     "--chat-template to prompt this (base) model with raw text")
            ids = self.tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                     add_generation_prompt=True, tokenize=True)
            return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        return self.tokenizer.encode(text, add_special_tokens=True)

    @torch.no_grad()
    def token_logprobs(self, seqs: Sequence[Sequence[int]]) -> LogProbs:
        out: LogProbs = []
        for start in range(0, len(seqs), self.batch_size):
            batch = seqs[start:start + self.batch_size]
            length = max(len(s) for s in batch)
            ids = torch.full((len(batch), length), self.pad_id, dtype=torch.int64)
            mask = torch.zeros_like(ids)
            for i, s in enumerate(batch):
                ids[i, :len(s)], mask[i, :len(s)] = torch.as_tensor(list(s)), 1
            logits = self.model(input_ids=ids.to(self.device),
                                attention_mask=mask.to(self.device)).logits.float().cpu()
            out += _gather_logprobs(logits, ids, [len(s) for s in batch])
        return out

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy continuations (new ids only, stopped at EOS), batched with left padding."""
        length = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), length), self.pad_id, dtype=torch.int64)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, length - len(p):], mask[i, length - len(p):] = torch.as_tensor(list(p)), 1
        out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                  max_new_tokens=max_new_tokens, do_sample=False,
                                  pad_token_id=self.pad_id, eos_token_id=self.eos_id)
        return [_until_eos(row[length:].tolist(), self.eos_id) for row in out.cpu()]

    def close(self) -> None:
        pass


def _gather_logprobs(logits: torch.Tensor, ids: torch.Tensor, lengths: list[int]) -> LogProbs:
    # logit(target) - logsumexp(logits) without materialising log_softmax over the vocabulary
    # (128k wide): one pass for logsumexp, one for argmax; float32 is far within 1e-4 relative.
    out = []
    for i, n in enumerate(lengths):
        row, target = logits[i, :n - 1], ids[i, 1:n]
        picked = row.gather(-1, target[:, None])[:, 0].double()
        logp = picked - torch.logsumexp(row, dim=-1).double()
        out.append((logp.numpy(), (row.argmax(-1) == target).numpy()))
    return out


def _until_eos(ids: list[int], eos_ids) -> list[int]:
    stops = set(eos_ids) if isinstance(eos_ids, (list, tuple, set)) else {eos_ids}
    for i, t in enumerate(ids):
        if t in stops:
            return ids[:i]
    return ids


class MegatronBackend:
    """An elama checkpoint on megatron-core: one process (tp=pp=1, any saved layout) or all ranks
    of a torchrun launch with parallel.tp/pp overrides. Every rank runs the same calls."""

    def __init__(self, path, overrides: Sequence[str] = (), *, batch_size: int = 8, seed: int = 0):
        from elama import scoring
        from elama.tokenizer import load_tokenizer

        cfg, self.dims, self.chunks, self._started = scoring.open_scoring_model(path, overrides)
        self.path, self.batch_size, self.cfg = Path(path), batch_size, cfg
        self.tokenizer = load_tokenizer()
        self.vocab_size = cfg.model.vocab_size
        self.bos_id, self.eos_id = self.tokenizer.bos_id, self.tokenizer.eos_id
        self.pad_id = self.tokenizer.pad_id if self.tokenizer.pad_id < self.vocab_size else 0
        self.is_output = scoring.is_output_rank()
        self.multiple_of = 8 * self.dims.tp

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([i for i in ids if i < self.tokenizer.bos_id])

    def encode_prompt(self, text: str, chat: bool) -> list[int]:
        if chat:
            return self.tokenizer.encode_dialog([{"role": "user", "content": text}],
                                                add_generation_prompt=True)
        return self.tokenizer.encode(text, bos=True)

    def token_logprobs(self, seqs: Sequence[Sequence[int]]) -> LogProbs:
        from elama import scoring

        out: LogProbs = []
        for start in range(0, len(seqs), self.batch_size):
            batch = list(seqs[start:start + self.batch_size])
            logits, ids = scoring.padded_logits(self.chunks, batch, pad_id=self.pad_id,
                                                multiple_of=self.multiple_of)
            part = None if logits is None else _gather_logprobs(logits, ids, [len(s) for s in batch])
            out += scoring.share_from_last_stage(part, self.dims)  # every rank needs them
        return out

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy decoding by full forward passes (no KV cache: evaluation-sized runs only)."""
        stops = {self.eos_id, self.tokenizer.eot_id}
        seqs, new, done = [list(p) for p in prompts], [[] for _ in prompts], [False] * len(prompts)
        for _ in range(max_new_tokens):
            live = [i for i, d in enumerate(done) if not d]
            if not live:
                break
            nxt = self._argmax_next([seqs[i] for i in live])
            for i, t in zip(live, nxt):
                if t in stops:
                    done[i] = True
                else:
                    seqs[i].append(t)
                    new[i].append(t)
        return new

    def _argmax_next(self, seqs: list[list[int]]) -> list[int]:
        from elama import scoring

        logits, _ = scoring.padded_logits(self.chunks, seqs, pad_id=self.pad_id,
                                          multiple_of=self.multiple_of)
        nxt = None if logits is None else [int(logits[i, len(s) - 1].argmax()) for i, s in enumerate(seqs)]
        return scoring.share_from_last_stage(nxt, self.dims)

    def close(self) -> None:
        from elama import scoring

        scoring.close_scoring(self._started)
