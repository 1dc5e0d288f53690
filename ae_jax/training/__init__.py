"""Training: the objective, the train state, the per-device step and epoch, and the run loop."""
