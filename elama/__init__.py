"""elama: Llama 3.1 domain adaptation for e-commerce on megatron-core."""
__version__ = "0.1.0"
