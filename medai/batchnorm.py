"""BatchNorm inference statistics: re-estimated over training batches, averaged across workers.

During training a BatchNorm layer normalises with the batch's own statistics and keeps an
exponential moving average of them for inference. From random initialisation the weights move
faster than that average follows, so a model evaluated with its moving statistics is not the
model that was trained: the demo once showed validation accuracy 0.50 at every epoch while
validation AUC was 0.99. Before each validation the loop therefore re-estimates the moving
statistics as the plain average of the batch statistics over recent training batches, with the
current weights ("precise BatchNorm", Wu & Johnson 2021), then averages them across workers.

Keras 3's ``BatchNormalization.call`` updates ``moving = m * moving + (1 - m) * batch`` with the
momentum ``m`` fixed when the step is traced. Setting the moving statistics to zero before a
training-mode forward pass leaves ``(1 - m) * batch`` in them (the forward pass itself uses the
batch statistics, not the moving ones), so the batch statistics are recovered without
cancellation and without changing or retracing the layers.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "batchnorm_layers",
    "batchnorm_statistics",
    "make_bn_reestimation",
    "make_bn_sync",
]


def batchnorm_layers(model) -> list:
    """Every ``BatchNormalization`` layer of ``model``, nested models included, in order."""
    import keras

    found, stack = [], list(reversed(model.layers))
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        stack.extend(reversed(getattr(layer, "layers", [])))
    return found


def batchnorm_statistics(model) -> list:
    """The moving mean and variance variables of every BatchNorm layer, nothing else.

    ``model.non_trainable_variables`` also holds Dropout's and the random layers' seed states;
    averaging those across workers would make every rank draw the same random numbers.
    """
    return [
        v for layer in batchnorm_layers(model) for v in (layer.moving_mean, layer.moving_variance)
    ]


def make_bn_reestimation(model, strategy):
    """Build ``reestimate(batches)``: moving statistics := mean batch statistics over ``batches``.

    Each call runs the model in training mode (no gradients, no weight change) on every batch
    and leaves, in each BatchNorm layer, the cumulative average of the batch means and batch
    variances: after batch ``k`` the estimate is ``old + (batch - old) / k``, i.e. a momentum of
    ``(k - 1) / k``. Per replica only: no collective op runs, so ranks may differ in batch count.

    Args:
        model: The Keras model (built under ``strategy``'s scope).
        strategy: The ``tf.distribute`` strategy the model's variables belong to.

    Returns:
        A function taking an iterable of ``uint8`` image batches of one shape.
    """
    import tensorflow as tf

    layers = batchnorm_layers(model)

    def replica(images, k):
        previous = [
            (tf.identity(layer.moving_mean), tf.identity(layer.moving_variance)) for layer in layers
        ]
        for layer in layers:
            layer.moving_mean.assign(tf.zeros_like(layer.moving_mean))
            layer.moving_variance.assign(tf.zeros_like(layer.moving_variance))
        model(images, training=True)
        for layer, olds in zip(layers, previous, strict=True):
            keep = 1.0 - layer.momentum  # the share of the batch statistic just written
            for variable, old in zip((layer.moving_mean, layer.moving_variance), olds, strict=True):
                batch = tf.convert_to_tensor(variable) / keep
                variable.assign(old + (batch - old) / k)

    @tf.function(reduce_retracing=True)
    def step(images, k):
        strategy.run(replica, args=(images, k))

    def reestimate(batches: Iterable) -> int:
        count = 0
        for count, images in enumerate(batches, start=1):
            step(images, tf.constant(float(count)))
        return count

    return reestimate


def make_bn_sync(model, strategy):
    """Build ``sync()``: replace every BatchNorm moving statistic by its mean across workers.

    Only :func:`batchnorm_statistics` are touched. Every rank must call it (collective).
    """
    import tensorflow as tf

    variables = batchnorm_statistics(model)

    @tf.function
    def sync():
        local = strategy.run(lambda: [tf.identity(v) for v in variables])
        # One reduce per variable: a single reduce of the whole list pairs values of different
        # shapes under MultiWorkerMirroredStrategy (it packs them out of order).
        for variable, value in zip(variables, local, strict=True):
            variable.assign(strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None))

    return sync
