"""medimg: a reproducible experiment stack for biomedical image classification."""

__version__ = "0.1.0"
