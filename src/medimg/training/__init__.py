"""Training: input pipeline, per-seed fit, train stage."""
