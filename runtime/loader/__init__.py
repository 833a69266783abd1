"""Model loaders: GGUF and the HF safetensors layout."""
