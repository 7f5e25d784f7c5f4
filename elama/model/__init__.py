"""The Llama 3.1 model on megatron-core: configuration translation, layer specs, counts."""
