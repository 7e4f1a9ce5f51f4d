"""Sandbox base models (`edit-rlhf sandbox pretrain`): tiny VAE, Kontext editor (editor SFT) and describing VLM, and their quality gates."""
