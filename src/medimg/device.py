"""Which accelerator Keras trains on, named for run tags and result files."""

from __future__ import annotations

import keras


def device_name() -> str:
    """The devices Keras sees, e.g. "gpu:0 (NVIDIA H200)" or "cpu:0"."""
    devices = keras.distribution.list_devices()
    if keras.backend.backend() == "jax":
        import jax  # only when JAX is the backend: it is then installed and initialised

        kinds = sorted({d.device_kind for d in jax.devices()})
        return f"{', '.join(devices)} ({', '.join(kinds)})"
    return ", ".join(devices)
