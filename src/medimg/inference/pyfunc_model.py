"""The served model as MLflow "models from code": this file is logged with the model and
run when MLflow loads it, instead of a pickled object (unpickling can run arbitrary code,
and a pickle breaks when the class moves)."""

import mlflow

from medimg.inference.pyfunc import KerasImageClassifier

mlflow.models.set_model(KerasImageClassifier())
