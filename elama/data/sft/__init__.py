"""Instruction tuning data: chat rendering with answer-token loss masks (chat), offline
tokenization into ids + masks (preprocess, store), packing (packing), mixtures by capability area
and task with a budget report (mixture), and the SFT dataset the trainer reads (dataset)."""
