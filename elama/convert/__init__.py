"""Checkpoint conversion: streamed Hugging Face safetensors I/O (hf.py) and the HF <-> megatron
name table with its tensor transforms (mapping.py)."""
