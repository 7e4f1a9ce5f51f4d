"""Supervised fine-tuning of the editor: flow-matching maths, triple encoding, evaluation, the learner core."""
