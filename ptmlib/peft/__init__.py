"""Part III helpers: adapters (LoRA, IA3, prompts), fine-tuning methods, merging, spectral and sparse tuning, prompting frozen models, interpretable adaptation."""
