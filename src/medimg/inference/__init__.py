"""Using a trained model on new images: `medimg predict`, Grad-CAM and MLflow serving.

- `sources`: a model given as a folder, `runs:/...` or `models:/...` -> a local folder
  holding model.keras + preprocessing.json (`resolve_model_source`).
- `inputs`: files, folders and glob patterns -> the image files to classify.
- `classifier`: the model loaded once; images preprocessed by `load_image` and
  classified in batches; a bad image becomes a result with its reason.
- `predict`: `medimg predict`'s work, from model and inputs to one result per input.
- `results`: the results as a table, JSON or CSV.
- `gradcam`, `overlay`: class-activation heat maps and their captioned PNGs.
- `pyfunc` (+ `pyfunc_model`, logged as MLflow "models from code"): the wrapper that
  serves a model over HTTP, and `log_classifier_model`.
- `captions`: thesis-style captions ("87.10 % probability: pneumonia").

Modules import Keras or MLflow only where they need them, so `captions` stays light.
"""

from medimg.config.datasets import MIN_IMAGE_SIZE

# Settings the CLI shows in --help; here so that building the parser imports nothing heavy.
# Below this many pixels on the shorter side an image holds too little to classify (a
# thumbnail, an icon, a 1 x 1 placeholder), yet a model would still answer confidently:
# the fetch stage's minimum, so that training never sees an image predict would refuse.
DEFAULT_MIN_SIZE = MIN_IMAGE_SIZE
# Images decoded, then classified, together: at 600 px x 1 channel a batch is about 6 MB.
DEFAULT_BATCH_SIZE = 16
FORMATS = ("table", "json", "csv")
