"""Training: the loop, the step, run folders, resources."""
