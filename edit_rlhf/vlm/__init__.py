"""Qwen2.5-VL supervised fine-tuning core: chat batches with assistant-only labels, vision-attention patch, generation."""
