"""One module per model: the module's name is the model's name in params.yaml.

Each defines its options schema, its builder and `MODEL = ModelSpec(...)`
(medimg.models.registry). No Keras at the top of a module: the registry imports
them to validate params.yaml.
"""
