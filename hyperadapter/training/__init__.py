"""Training: the generator's loop (accelerate), its objectives and recipes, and the LoRA baselines
(per-task oracle, multi-task) that the evaluation compares against."""
