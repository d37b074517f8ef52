"""MLflow tracking: a side concern, kept in one place.

- `store`: which store (MLFLOW_TRACKING_URI, else the project's sqlite store), whether
  it can be used, the experiments in it;
- `runs`: parameters and tags of a run, runs that survive a kill (and are never written
  into once deleted or another store's), orphaned runs closed, logged models left
  unfinished by a kill discarded;
- `batch`: logging many values in requests within MLflow's limits, each step once;
- `model_registry`: versions of the best seeds and the champion alias.

The Keras callback that logs each epoch is medimg.training.mlflow_logger: it reads the
training's resume state, and tracking sits below training.
"""
