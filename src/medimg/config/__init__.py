"""params.yaml, validated into typed objects, one part per stage.

- `base`: reading the file (duplicate keys refused), profiles, one error format.
- `datasets`: `datasets.<name>`, what fetch, split and augment read.
- `runs`: `runs.<name>` merged with `run_defaults`, and `tracking`: train, evaluate.
- `studies`: `tune.<name>` checked against its run: the tune stage.
- `params`: the whole file: `medimg params`, the report, the GPU bundle.

A stage imports only the part it reads, so editing one part's schema re-runs only
the stages that read it (dvc.yaml lists each stage's modules).
"""
