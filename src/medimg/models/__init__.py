"""Models: the networks, and what training needs to know about them.

- `registry`: a model named X is medimg.models.zoo.X's `MODEL` (a ModelSpec: options
  schema, builder, feature blocks, batch norm, input range); no Keras imported.
- `zoo/`: one module per model (xray_cnn, mri_cnn, alexnet, efficientnet_b0).
- `options`: option types several models share (dropout, initial weights).
- `layers`: Keras building blocks the zoo's networks share (conv blocks, the head).
- `applications`: keras.applications backbones with a new head.
- `fine_tuning`: freezing a feature extractor and unfreezing its top blocks.
- `transfer`: starting a model from another trained model's layers.
"""
