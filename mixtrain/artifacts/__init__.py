"""What a run leaves: checkpoints and the model in them, saved logits, stored temperatures."""
