"""Checkpoint conversion between Hugging Face Llama directories and elama checkpoints:
streamed safetensors I/O (hf.py, safetensors_file.py), the HF <-> megatron name table with its
inverse-paired tensor transforms (mapping.py), import (import_hf.py), layer-by-layer export from
distributed checkpoints (export_hf.py over dist_reader.py), and HF tokenizer files made from the
tiktoken model (hf_tokenizer.py)."""
