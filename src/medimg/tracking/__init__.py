"""MLflow tracking: a side concern, kept in one place.

- `store`: which store (MLFLOW_TRACKING_URI, else the project's sqlite store), whether
  it can be used, the experiments in it;
- `runs`: parameters and tags of a run, runs that survive a kill, orphaned runs closed;
- `model_registry`: versions of the best seeds and the champion alias;
- `callbacks`: the Keras callback that logs each epoch (training reaches MLflow only here).
"""
