"""Train on a machine without MLflow, DVC or network, and bring the results home.

The lent GPU machine has JAX and no TensorFlow, MLflow, DVC or network. The
runner splits the pipeline where the tools end:

    here   `medimg gpu-bundle`      the splits made by the split stage + params.yaml
                                    -> a small bundle folder (bundle.py)
    there  `python -m medimg.runner.run`  unpack the carried archive, run the augment
                                    stage's code, fit_one_seed and the metrics for the
                                    chosen runs and seeds -> plain files under $OUT
                                    (run.py; its folder format: results.py)
    here   `medimg import-results`  log those files into the MLflow store as parent
                                    and child runs tagged with the device (importer.py)

so GPU runs appear in the same store, and in `medimg report`, beside CPU runs.
Nothing on the "there" side imports MLflow, DVC, requests or imagehash.
"""
