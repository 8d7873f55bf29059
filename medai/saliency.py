"""Where the model looks: saliency heatmaps and the pointing-game localisation check.

Three methods (:data:`METHODS`, ``--saliency``):

- ``gradcam`` (Selvaraju et al., 2017) weights the feature maps of one convolutional block by
  the spatial mean of the gradient of a finding's logit with respect to them and keeps the
  positive part;
- ``hirescam`` (Draelos and Carin, 2020) multiplies each cell's feature maps by the gradient
  at that cell before summing over channels: no spatial averaging, so a cell counts by the
  evidence found there and the map keeps the grid's full detail;
- ``occlusion`` (Zeiler and Fergus, 2014; :mod:`medai.occlusion`) slides a patch filled from
  a blurred copy of the image over it and records how far the finding's logit falls: model
  agnostic, as sharp as its patch, and about a hundred times dearer (measured in the README).

For the two gradient methods each grid cell's value is spread over the pixels it sees: a
Gaussian centred on its receptive field, as wide as the block's effective receptive field
(Luo et al., 2016), rather than interpolated between cell centres.
How faithful a map is to the score is measured by :mod:`medai.faithfulness` (deletion curves).

Mirror images (:data:`MIRRORS`, gradient methods): a network's features need not sit on the
object they detect. On phantom models the maximum of an image's own Grad-CAM sat consistently
above and left of the lesion (median offset at ``mixed5`` 3-13 px up, 2-4 px left, on three
models), and flipping the input flipped the offset: it belongs to the features, not to the
image. So the heatmap is the sum of the Grad-CAM of the image and of its three mirror images
(top-bottom, left-right, both), each map flipped back, normalised after summing, so each view
counts by the evidence Grad-CAM found in it. Averaging CAMs over flipped inputs is the
test-time augmentation weakly supervised segmentation uses for its CAMs (e.g. Ahn and Kwak,
2018); it costs four Grad-CAM passes per image, made for example and boxed images only.

Which block (:func:`choose_block`): ``mixed5``, the middle of InceptionV3's 17x17 stage (6x6
at 128 px, 14x14 at 256 px), wherever its grid is at least :data:`MIN_GRID` cells wide (inputs
from 128 px); below that, ``mixed2``, the deepest block of the finer grid (9x9 at 96 px).

Why, measured on the 44 boxed test lesions of six 128 px from-scratch phantom models, each
image's own Grad-CAM: with interpolation between cell centres, ``mixed2``'s maximum sat on the
lesion's rim, where its cells fire most, just outside the box (hit rates 0.18-0.48), and the
coarse blocks did worse (``mixed4`` 0.09-0.84, ``mixed7`` 0.07-0.23). Spread over their
effective fields, the five models trained with exposure jitter (which must find the lesion to
separate the classes) hit 0.70-0.95 at ``mixed5`` (four of them 0.86 or more), against
0.57-0.98 at ``mixed2`` and 0.70-0.86 at ``mixed7``. The sixth, trained without it, separates
the classes partly by overall brightness and hits about 0.4 at every block (README,
Limitations). Summed over mirror images, ``mixed5`` hit 0.8 or more in 9 of 10 further
trainings (0.82-1.00; the tenth 0.64, its maximum pulled towards the mediastinum), where each
image's own map did in 6 (0.39-1.00); on the two weakest, narrower spreading (8-32 px)
did not help.
Larger inputs were not measured on phantoms.

The pointing game (Zhang et al., 2016) counts a hit when the heatmap's maximum falls inside
the finding's bounding box.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medai.errors import MedaiError

__all__ = [
    "BLOCK",
    "FALLBACK_BLOCK",
    "MIN_GRID",
    "DEFAULT_METHOD",
    "METHODS",
    "METHOD_NAMES",
    "MIRRORS",
    "SaliencyError",
    "Box",
    "Explainer",
    "cell_centres",
    "check_method",
    "choose_block",
    "gradcam",
    "heatmaps",
    "load_explainer",
    "pointing_hit",
    "overlay",
]

log = logging.getLogger("medai.saliency")

MIN_GRID = 6
# The heatmap methods (see the module docstring). The default, chosen by measurement on
# phantoms with distractors (benchmarks/saliency_report.py, README Limitations): on three 128 px
# `medai train` models Grad-CAM pointed at 0.67-0.93 of the Mass lesions with deletion below
# random on all three; HiResCAM met that on two, occlusion pointed at 0.40-0.91 at 9-12 times
# the cost (a report with it overruns the 60 s archive-scale budget).
METHODS = ("gradcam", "hirescam", "occlusion")
DEFAULT_METHOD = "gradcam"
METHOD_NAMES = {"gradcam": "Grad-CAM", "hirescam": "HiResCAM", "occlusion": "Occlusion"}
BLOCK = "mixed5"
FALLBACK_BLOCK = "mixed2"
_BATCH = 16  # images in one Grad-CAM pass, mirror images included: bounded memory at 512 px
# The image and its mirror images, as (top-bottom, left-right) flips; see the module docstring.
MIRRORS = ((False, False), (False, True), (True, False), (True, True))
_BASE = "inception_v3"
# Where each block's grid lies on the input: cell i's receptive field is centred on pixel
# offset + stride * i (stride, offset below). InceptionV3's unpadded stem and reductions leave
# the grid off the image's corners (at 128 px mixed2's 13 cells are centred on pixels 13..109),
# so stretching the grid over the whole image, as an image resize does, moves the heatmap by
# up to a cell. tests/test_saliency.py checks the table against each cell's gradient support.
_GEOMETRY = {
    **{f"mixed{i}": (8, 13) for i in range(3)},
    **{f"mixed{i}": (16, 21) for i in range(3, 8)},
    **{f"mixed{i}": (32, 37) for i in range(8, 11)},
}


# Each block's effective receptive field: the spatial standard deviation, in input pixels, of
# the mean |d(cell) / d(input)| of a central cell, measured on an untrained InceptionV3 at
# 299 px (where the fields of every block fit inside the image). Trained phantom models
# measured 17-21 px at mixed1-2. tests/test_saliency.py re-measures mixed0-3.
_ERF_SIGMA = {
    "mixed0": 12.0,
    "mixed1": 16.0,
    "mixed2": 18.0,
    "mixed3": 19.0,
    "mixed4": 35.0,
    "mixed5": 40.0,
    "mixed6": 43.0,
    "mixed7": 44.0,
    "mixed8": 45.0,
    "mixed9": 46.0,
    "mixed10": 50.0,
}


class SaliencyError(MedaiError, ValueError):
    """An unknown saliency method; the message names the known ones."""


def check_method(method: str) -> str:
    """``method`` if it is one of :data:`METHODS`.

    Raises:
        SaliencyError: Naming the known methods.
    """
    if method not in METHODS:
        raise SaliencyError(f"--saliency must be one of {', '.join(METHODS)}, not {method!r}")
    return method


@dataclass(frozen=True)
class Box:
    """A bounding box in the pixel coordinates of the original image.

    Attributes:
        x: Left edge.
        y: Top edge.
        width: Width.
        height: Height.
    """

    x: float
    y: float
    width: float
    height: float

    def contains(self, col: float, row: float) -> bool:
        """Whether the point (``col``, ``row``) lies inside the box (edges included)."""
        return self.x <= col <= self.x + self.width and self.y <= row <= self.y + self.height


def choose_block(model) -> str:
    """The InceptionV3 ``mixed`` block Grad-CAM explains (see the module's docstring).

    Args:
        model: A medai classifier (:func:`medai.model.build_model`).

    Returns:
        :data:`BLOCK` where its grid is at least :data:`MIN_GRID` cells wide, else
        :data:`FALLBACK_BLOCK`.
    """
    base = model.get_layer(_BASE)
    grid = int(base.get_layer(BLOCK).output.shape[1])
    return BLOCK if grid >= MIN_GRID else FALLBACK_BLOCK


def _heads(model) -> tuple[list, list]:
    """The layers before and after the InceptionV3 base, in call order."""
    names = [layer.name for layer in model.layers]
    at = names.index(_BASE)
    return list(model.layers[1:at]), list(model.layers[at + 1 :])


def gradcam(
    model,
    images: np.ndarray,
    output: int = 0,
    block: str | None = None,
    mirrored: bool = True,
    per_cell: bool = False,
) -> np.ndarray:
    """Grad-CAM (or HiResCAM) heatmaps of one model output for a batch of images.

    Args:
        model: A medai classifier taking ``uint8 (N, S, S, 1)``.
        images: The decoded images (:func:`medai.images.decode_image` output), ``(N, S, S, 1)``.
        output: Index of the finding (the model's output column).
        block: InceptionV3 block to explain; default :func:`choose_block`.
        mirrored: Sum the Grad-CAM of each image and of its :data:`MIRRORS` (each flipped
            back) before normalising, as the module's docstring explains; ``False``: the
            image's own Grad-CAM only.
        per_cell: HiResCAM: weight each cell's maps by the gradient at that cell, not by
            the gradient's spatial mean.

    Returns:
        ``float32 (N, S, S)`` heatmaps in [0, 1] (all zeros where no feature raised the logit).
    """
    outputs = int(model.outputs[0].shape[-1])
    if not 0 <= output < outputs:
        raise ValueError(f"output {output} out of range: the model has {outputs} output(s)")
    block = block or choose_block(model)
    mirrors = MIRRORS if mirrored else MIRRORS[:1]
    views = np.concatenate([_flip(images, *mirror) for mirror in mirrors])
    cam = _cell_cam(model, views, output, block, per_cell)
    heat = place_cells(cam, block, images.shape[1:3]).reshape(len(mirrors), *images.shape[:3])
    heat = sum(_flip(part, *mirror) for part, mirror in zip(heat, mirrors, strict=True))
    peak = heat.max(axis=(1, 2), keepdims=True)
    return np.divide(heat, peak, out=np.zeros_like(heat), where=peak > 0).astype(np.float32)


def _flip(array: np.ndarray, rows: bool, cols: bool) -> np.ndarray:
    """``array`` (images or maps, ``(N, H, W, ...)``) mirrored top-bottom and/or left-right."""
    if rows:
        array = array[:, ::-1]
    if cols:
        array = array[:, :, ::-1]
    return np.ascontiguousarray(array)


def _cell_cam(model, images: np.ndarray, output: int, block: str, per_cell: bool) -> np.ndarray:
    """Grad-CAM (HiResCAM with ``per_cell``) on ``block``'s grid, before normalising:
    ``(N, rows, cols)``, at least 0."""
    import keras
    import tensorflow as tf

    base = model.get_layer(_BASE)
    # One forward pass yields both the block's maps and the base's output computed from them,
    # so the tape can differentiate the score with respect to the maps.
    extractor = keras.Model(base.input, [base.get_layer(block).output, base.output])
    before, after = _heads(model)
    x = tf.convert_to_tensor(images)
    for layer in before:
        x = layer([x, x, x]) if isinstance(layer, keras.layers.Concatenate) else layer(x)
    with tf.GradientTape() as tape:
        maps, features = extractor(x, training=False)
        tape.watch(maps)
        y = features
        for layer in after[:-1]:
            y = layer(y, training=False)
        # Explain the logit, not the probability: a saturated sigmoid has no gradient left.
        last = after[-1]
        logits = tf.matmul(tf.cast(y, last.kernel.dtype), last.kernel) + last.bias
        target = logits[:, output]
    grads = tape.gradient(target, maps)
    weights = grads if per_cell else tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    return tf.nn.relu(tf.reduce_sum(weights * maps, axis=-1)).numpy()


def cell_centres(block: str, cells: int) -> np.ndarray:
    """Input pixel (row or column index) on which each cell of ``block``'s grid is centred.

    Args:
        block: An InceptionV3 ``mixed`` block.
        cells: The block's grid size along the axis.
    """
    stride, offset = _GEOMETRY[block]
    return offset + stride * np.arange(cells, dtype=np.float64)


def place_cells(cam: np.ndarray, block: str, size: tuple[int, int]) -> np.ndarray:
    """``(N, H, W)`` maps from ``(N, rows, cols)`` grid values, each spread over its field."""
    rows = _placement(block, cam.shape[1], size[0])
    cols = _placement(block, cam.shape[2], size[1])
    return np.einsum("pi,nij,qj->npq", rows, cam, cols)


def _placement(block: str, cells: int, size: int) -> np.ndarray:
    """``(size, cells)`` weights: a Gaussian per cell on its centre, width the block's field."""
    centres = cell_centres(block, cells)
    pixels = np.arange(size, dtype=np.float64)[:, None]
    return np.exp(-0.5 * ((pixels - centres[None, :]) / _ERF_SIGMA[block]) ** 2)


def pointing_hit(heatmap: np.ndarray, box: Box, original_size: tuple[int, int]) -> bool:
    """Whether the heatmap's maximum falls inside ``box``.

    Args:
        heatmap: ``(S, S)`` heatmap at the model's input size.
        box: The finding's box in the original image's pixels.
        original_size: ``(width, height)`` of the original image (NIH: 1024 x 1024).
    """
    row, col = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    scale_x = original_size[0] / heatmap.shape[1]
    scale_y = original_size[1] / heatmap.shape[0]
    # The centre of the winning pixel, in original coordinates.
    return box.contains((col + 0.5) * scale_x, (row + 0.5) * scale_y)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """A grey radiograph with its heatmap blended in as colour, ``uint8 (S, S, 3)``.

    Args:
        image: ``uint8 (S, S)`` or ``(S, S, 1)``.
        heatmap: ``(S, S)`` in [0, 1].
        alpha: Weight of the heatmap where it is strongest.
    """
    from matplotlib import colormaps

    grey = np.repeat(np.asarray(image, dtype=np.float32).reshape(heatmap.shape)[..., None], 3, -1)
    colour = colormaps["jet"](np.clip(heatmap, 0.0, 1.0))[..., :3] * 255.0
    weight = alpha * np.clip(heatmap, 0.0, 1.0)[..., None]
    return np.clip(grey * (1.0 - weight) + colour * weight, 0, 255).astype(np.uint8)


def heatmaps(
    model, images: np.ndarray, output: int, method: str, block: str | None = None
) -> np.ndarray:
    """Heatmaps ``float32 (N, S, S)`` in [0, 1] of one output by one of :data:`METHODS`.

    Args:
        model: A medai classifier taking ``uint8 (N, S, S, 1)``.
        images: ``uint8 (N, S, S, 1)``.
        output: Index of the finding.
        method: One of :data:`METHODS`.
        block: Block the gradient methods explain; default :func:`choose_block`.
    """
    check_method(method)
    if method == "occlusion":
        from medai.occlusion import occlusion

        return occlusion(model, images, output)
    step = max(1, _BATCH // len(MIRRORS))
    parts = [
        gradcam(model, images[at : at + step], output, block, per_cell=method == "hirescam")
        for at in range(0, len(images), step)
    ]
    return np.concatenate(parts) if parts else np.zeros((0,) + images.shape[1:3], np.float32)


@dataclass
class Explainer:
    """A model directory's Keras network, the saliency method and the block it explains.

    Attributes:
        model: The loaded classifier.
        model_id: Its id (sha256 of ``model.keras``, checked on load).
        findings: Output names, in output order.
        image_size: Input size.
        block: The InceptionV3 block the gradient methods explain
            (:func:`medai.saliency.choose_block`).
        method: One of :data:`METHODS`.
    """

    model: object
    model_id: str
    findings: list[str]
    image_size: int
    block: str
    method: str = DEFAULT_METHOD

    def heatmaps(self, images: np.ndarray, finding: str) -> np.ndarray:
        """Maps ``float32 (N, S, S)`` of ``finding`` for ``uint8 (N, S, S, 1)`` images."""
        return heatmaps(self.model, images, self.findings.index(finding), self.method, self.block)


def load_explainer(model_dir: str | Path, method: str = DEFAULT_METHOD) -> Explainer:
    """Load a model directory for heatmaps (TensorFlow is imported here, not before).

    Raises:
        ModelDirError: If the directory is incomplete or ``model.keras`` does not match its card.
        SaliencyError: If ``method`` is not one of :data:`METHODS`.
    """
    from medai.artifact import card_findings, load_model_dir
    from medai.runtime import quiet_tensorflow

    check_method(method)
    quiet_tensorflow()
    loaded = load_model_dir(model_dir)
    block = choose_block(loaded.model)
    model_id = str(loaded.card["model_id"])
    log.info("%s on InceptionV3 block %s of model %s", method, block, model_id[:12])
    return Explainer(
        model=loaded.model,
        model_id=model_id,
        findings=list(card_findings(loaded.card)),
        image_size=int(loaded.card["image_size"]),
        block=block,
        method=method,
    )
