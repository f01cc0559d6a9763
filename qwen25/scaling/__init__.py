"""Hyperparameter scaling laws (report §3, SPEC §4): sweep a grid of model sizes, token budgets, learning rates and
batch sizes on the one trainer; fit the optimal LR and batch and the final loss as functions of N and D (MoE
included); predict them for a new run; check the fit on held-out runs."""
