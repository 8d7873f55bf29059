"""The network: InceptionV3 with a binary head, taking the ``uint8`` images of :mod:`medai.images`.

The model's first layers finish preprocessing (one channel repeated to RGB, InceptionV3's
``x / 127.5 - 1`` scaling), so every caller feeds it exactly what
:func:`medai.images.decode_image` returns. Only built-in Keras layers are used, so
``model.keras`` loads anywhere with ``keras.saving.load_model`` and no custom objects.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from medai.errors import MedaiError

__all__ = [
    "image_batches",
    "HEADS",
    "WeightsError",
    "ModelSpec",
    "build_model",
    "rebuild_with_policy",
    "resolve_weights",
    "ensure_imagenet_weights",
]

HEADS = ("gap", "flatten")
IMAGENET_FILE = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
MIN_IMAGE_SIZE = 75  # InceptionV3's smallest accepted input


class WeightsError(MedaiError, RuntimeError):
    """The requested initial weights cannot be had; the message says how to supply them."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything that defines the architecture.

    Attributes:
        image_size: Input width and height in pixels.
        head: ``gap`` (global average pooling) or ``flatten`` (the original design).
        weights: ``imagenet``, ``none`` or a path to a Keras InceptionV3 ``notop`` weights file.
        dropout: Dropout rate before the output units.
        n_outputs: Sigmoid outputs, one per finding (ordered as the card's ``findings``).
    """

    image_size: int = 256
    head: str = "gap"
    weights: str = "imagenet"
    dropout: float = 0.2
    n_outputs: int = 1

    @property
    def pretrained(self) -> bool:
        """Whether the base starts from trained weights (and so keeps BatchNorm frozen)."""
        return self.weights != "none"


def resolve_weights(weights: str) -> str | None:
    """Translate the ``--weights`` option into the argument Keras expects, checking files.

    Args:
        weights: ``imagenet``, ``none`` or a path to a weights file.

    Returns:
        ``"imagenet"``, ``None`` or an absolute file path.

    Raises:
        WeightsError: If a named weights file does not exist.
    """
    if weights == "none":
        return None
    if weights == "imagenet":
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"--weights: no such weights file: {weights} (use imagenet, none or a path)"
        )
    return str(path.resolve())


IMAGENET_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/" + IMAGENET_FILE
)


def ensure_imagenet_weights() -> Path:
    """Fetch (or find in Keras' cache) the ImageNet weights; fail with instructions if impossible.

    Called by the training driver before any worker starts, so a run that cannot get its
    pretrained weights stops at once instead of failing, or worse, starting from random
    weights, inside the workers.

    Raises:
        WeightsError: If the weights are neither cached nor downloadable.
    """
    import keras

    try:
        return Path(keras.utils.get_file(IMAGENET_FILE, IMAGENET_URL, cache_subdir="models"))
    except Exception as exc:  # Keras raises a bare Exception on a failed download
        raise WeightsError(_imagenet_help(exc)) from exc


def _imagenet_help(exc: BaseException) -> str:
    return (
        f"could not fetch the ImageNet weights for InceptionV3 ({exc}). On a machine with "
        f"network access download {IMAGENET_URL} and either pass the file with --weights PATH "
        f"or put it in ~/.keras/models/{IMAGENET_FILE}. To train from random initialisation "
        "instead, say --weights none explicitly."
    )


def _load_base(spec: ModelSpec):
    import keras

    weights = resolve_weights(spec.weights)
    shape = (spec.image_size, spec.image_size, 3)
    try:
        return keras.applications.InceptionV3(include_top=False, weights=weights, input_shape=shape)
    except Exception as exc:  # Keras raises a bare Exception on a failed download
        if weights != "imagenet":
            raise WeightsError(f"cannot load weights from {weights}: {exc}") from exc
        raise WeightsError(_imagenet_help(exc)) from exc


def build_model(spec: ModelSpec):
    """Build the classifier: ``uint8 (size, size, 1)`` image in, one probability per finding out.

    The output layer ``score`` is ``Dense(spec.n_outputs, sigmoid)``: output shape ``(N, K)``,
    ``(N, 1)`` for a single finding.

    Args:
        spec: The architecture.

    Returns:
        An uncompiled ``keras.Model``.

    Raises:
        WeightsError: If the requested initial weights cannot be loaded.
        ValueError: On an unknown head, too small an image size or fewer than one output.
    """
    import keras

    if spec.n_outputs < 1:
        raise ValueError(f"a model needs at least one output, not {spec.n_outputs}")
    if spec.head not in HEADS:
        raise ValueError(f"--head must be one of {', '.join(HEADS)}, not {spec.head!r}")
    if spec.image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"--image-size must be at least {MIN_IMAGE_SIZE} for InceptionV3")
    inputs = keras.Input((spec.image_size, spec.image_size, 1), dtype="uint8", name="image")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="inception_scaling")(inputs)
    x = keras.layers.Concatenate(name="gray_to_rgb")([x, x, x])
    base = _load_base(spec)
    if not spec.pretrained:
        # From scratch on a few hundred images, the default momentum (0.99) leaves inference
        # statistics far behind the weights for the first epochs; 0.9 tracks them.
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.9
    # A pretrained base keeps its BatchNorm statistics (inference mode) while fine-tuning.
    x = base(x, training=False) if spec.pretrained else base(x)
    if spec.head == "gap":
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    else:
        x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(1024, activation="relu", name="fc")(x)
    x = keras.layers.Dropout(spec.dropout, name="dropout")(x)
    # float32 output keeps probabilities exact under a mixed precision policy.
    outputs = keras.layers.Dense(
        spec.n_outputs, activation="sigmoid", dtype="float32", name="score"
    )(x)
    return keras.Model(inputs, outputs, name=f"inceptionv3_{spec.head}")


def rebuild_with_policy(model, spec: ModelSpec, policy: str):
    """Rebuild ``model`` under a dtype policy (e.g. ``mixed_bfloat16``) with the same weights.

    Setting a global policy before ``load_model`` has no effect on a saved model, so the
    network is constructed anew under the policy and the weights are copied in.
    """
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        fresh = build_model(replace(spec, weights="none"))
    finally:
        keras.config.set_dtype_policy(previous)
    fresh.set_weights(model.get_weights())
    return fresh


def image_batches(model) -> list:
    """A ``tf.function`` input signature for batches of any length of ``model``'s images.

    Tracing InceptionV3 takes tens of seconds on 2 cores; without a signature the last,
    shorter validation batch costs a second trace.
    """
    import tensorflow as tf

    spec = model.inputs[0]
    return [tf.TensorSpec((None, *spec.shape[1:]), spec.dtype)]
