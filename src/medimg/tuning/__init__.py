"""Optuna studies over the same training code as the train stage (`medimg tune`).

One study per `tune:` entry of params.yaml. A trial is the study's run with sampled
values, trained by `medimg.training.fit.fit_one_seed` (no second training loop) and
scored on the val split; trials are MLflow children of one study run.

Modules, in the order a study uses them:
- storage: the Optuna storage (the project's journal file by default, any RDB URL);
- study: the study's identity, sampler and pruner;
- workers: which worker runs which trial; trials of dead workers are failed and re-queued;
- space: sampled values from the search space;
- pruning: the per-epoch pruning callback;
- objective: one trial: train, score on val;
- trial_tracking: the MLflow study run and its trial runs;
- reports: figures, best_params.yaml and the command that applies them;
- tune_stage: all of it for `medimg tune` and the DVC stage.
"""
