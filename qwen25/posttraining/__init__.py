"""Post-training (report §4): SFT, reward model, DPO, GRPO; each a stage of the one trainer."""
