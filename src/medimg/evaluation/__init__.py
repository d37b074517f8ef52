"""Evaluation: metrics, figures, the evaluate stage."""
