"""Data stages: fetch, split, augment (prepare)."""
