"""lm-evaluation-harness model type "elama": an elama checkpoint (any saved layout) or a Hugging
Face directory scored by elama's own backends, so `lm_eval` tasks run on elama models.
Importing this module registers it; `tools/evaluate.py lm-eval ...` imports it and runs lm-eval's
CLI (lm-eval 0.4.13 discovers no models from other packages by itself).
  --model elama --model_args pretrained=DIR[,max_length=2048,overrides=model.precision=fp32]
(--batch_size is lm-eval's own flag; overrides are Hydra overrides for a checkpoint, separated
by spaces; one process: a checkpoint saved at any layout loads at tp=pp=1.)
"""
from __future__ import annotations

import logging

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from elama.eval import loglik
from elama.eval.backends import open_backend

logger = logging.getLogger(__name__)
DEFAULT_MAX_GEN_TOKS = 256


@register_model("elama")
class ElamaLM(TemplateLM):
    def __init__(self, pretrained: str, batch_size: int | str = 8,
                 max_length: int | str = loglik.DEFAULT_MAX_LENGTH, overrides: str = "",
                 **kwargs):
        super().__init__()
        if kwargs:
            logger.warning("elama model ignores model_args %s", sorted(kwargs))
        size = 8 if str(batch_size) in ("auto", "") else int(str(batch_size).split(":")[0])
        self.backend = open_backend(pretrained, overrides.split(), batch_size=size)
        self._max_length = int(max_length)

    @property
    def eot_token_id(self) -> int:
        return self.backend.eos_id

    @property
    def prefix_token_id(self) -> int:
        return loglik.prefix_id(self.backend)

    @property
    def max_length(self) -> int:
        return self._max_length

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        if add_special_tokens is False:
            return self.backend.encode(string)
        return self.backend.encode_prompt(string, chat=False)

    def tok_decode(self, ids) -> str:
        return self.backend.decode(ids)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        pairs = [(ctx, cont) for _, ctx, cont in requests]
        return loglik.score_token_pairs(self.backend, pairs, max_length=self._max_length)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        return loglik.loglikelihood_rolling(self.backend, [r.args[0] for r in requests],
                                            max_length=self._max_length)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy only (sampling arguments are ignored): one request at a time, cut at the first
        stop sequence."""
        out = []
        for req in tqdm(requests, desc="generate_until", disable=disable_tqdm):
            context, gen_kwargs = req.args
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
            ids = self.tok_encode(context)[-(self._max_length - max_new):]
            text = self.backend.decode(self.backend.generate([ids], max_new)[0])
            for stop in until:
                if stop and stop in text:
                    text = text[:text.index(stop)]
            out.append(text)
        return out


def run_cli(argv: list[str]) -> int:
    """lm-eval's own command line (`lm_eval run ...`) with the elama model registered."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval", "run", *argv]
    cli_evaluate()
    return 0
