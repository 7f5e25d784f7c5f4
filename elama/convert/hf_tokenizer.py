"""Hugging Face tokenizer files (tokenizer.json, tokenizer_config.json, chat template) made from the
Llama 3 tiktoken model, so that AutoTokenizer encodes exactly as elama.tokenizer does, adds
<|begin_of_text|> like Meta's release, and renders dialogs as Llama3Tokenizer.encode_dialog does.
"""
from __future__ import annotations

from pathlib import Path

from elama.convert.safetensors_file import CheckpointError
from elama.tokenizer import Llama3Tokenizer

# Llama 3's chat format, token for token what Llama3Tokenizer.encode_dialog produces: the special
# tokens split the text, so role, "\n\n" + stripped content, ... encode as separate pieces exactly
# as encode_dialog encodes them (Llama 3's pattern never joins "\n\n" with the following text).
LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- set role = 'ipython' if message['role'] == 'tool' else message['role'] %}"
    "{{- '<|start_header_id|>' + role + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)


def build_hf_tokenizer(tokenizer: Llama3Tokenizer):
    """A `tokenizers.Tokenizer` equal to the tiktoken model: byte-level BPE whose merges are
    ordered by tiktoken rank (transformers' TikTokenConverter, fed the ranks already parsed and
    hashed by Llama3Tokenizer rather than re-read through tiktoken's path-keyed file cache)."""
    from tokenizers import processors
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class _Converter(TikTokenConverter):
        def load_tiktoken_bpe(self, tiktoken_url):  # the ranks are given, not read from a path
            return tokenizer.mergeable_ranks

    specials = sorted(tokenizer.special_tokens, key=tokenizer.special_tokens.get)
    hf = _Converter(vocab_file=tokenizer.model_path, pattern=tokenizer.pattern,
                    extra_special_tokens=specials).converted()
    wrong = [(t, hf.token_to_id(t), i) for t, i in tokenizer.special_tokens.items()
             if hf.token_to_id(t) != i]
    if wrong or hf.get_vocab_size() != tokenizer.vocab_size:
        raise CheckpointError(f"{tokenizer.model_path}: converted vocabulary has "
                              f"{hf.get_vocab_size()} tokens (expected {tokenizer.vocab_size}); "
                              f"special token ids differ: {wrong[:3]}")
    bos = "<|begin_of_text|>"
    hf.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1",
                                      special_tokens=[(bos, tokenizer.bos_id)]),
    ])
    return hf


def write_hf_tokenizer(out_dir: str | Path, tokenizer: Llama3Tokenizer, *,
                       model_max_length: int) -> list[str]:
    """Write the tokenizer files into out_dir; return their names."""
    from transformers import PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    before = set(p.name for p in out_dir.iterdir())
    fast = PreTrainedTokenizerFast(
        tokenizer_object=build_hf_tokenizer(tokenizer), bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>", chat_template=LLAMA3_CHAT_TEMPLATE,
        model_max_length=model_max_length, model_input_names=["input_ids", "attention_mask"],
        # decode must give back tiktoken's text: no removal of spaces before punctuation
        clean_up_tokenization_spaces=False)
    fast.save_pretrained(str(out_dir))
    return sorted(set(p.name for p in out_dir.iterdir()) - before)
