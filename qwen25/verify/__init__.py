"""Verifiers for post-training data and evaluation, and the sandbox that runs model-written code."""
