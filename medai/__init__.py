"""medai: find a chosen finding in chest X-rays at archive scale.

Fine-tunes Keras InceptionV3 with Ray Train, scores image archives with Ray Data into Parquet,
and reports ROC/AUC. Importing this package does no work: TensorFlow and Ray load on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["predict_image", "__version__"]


def __getattr__(name: str):
    # Lazy so that `import medai` stays cheap (no TensorFlow import) for the CLI and Ray drivers.
    if name == "predict_image":
        from medai.predict import predict_image

        return predict_image
    raise AttributeError(f"module 'medai' has no attribute {name!r}")
