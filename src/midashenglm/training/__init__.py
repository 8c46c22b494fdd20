"""Training: the paper's three stages as recipes (configs/*.yaml), LoRA, checkpoints, torchrun."""
