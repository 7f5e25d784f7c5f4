"""Training data: offline tokenization into megatron-core indexed datasets (tokenize, readers,
shards, manifest), the demo corpus, and (lead-owned) blending, loading and SFT data."""
