"""How faithful a heatmap is to the score: deletion curves (Petsiuk et al., RISE, 2018).

The image is cut into a :data:`GRID` x :data:`GRID` grid of cells. The deletion curve removes
the cells from the hottest to the coldest of the heatmap (each cell's mean), in :data:`STEPS`
equal steps, filling each removed cell from a blurred copy of the image
(:func:`medai.occlusion.blurred`: detail goes, overall brightness stays), and follows the
finding's probability; its area under the curve (the mean over the fraction removed, 0 to 1,
trapezoidal) is low when the first cells the map names are the ones the score depends on. The
same curve with the cells in a random order (seeded by the image's own pixels, so an image gets
the same order in any batch) is the reference: a map whose deletion AUC is not below the random
one shows no more of what the score depends on than a guess. The report measures at most
:data:`MAX_IMAGES` images per finding (spread evenly over its boxed images; 34 forward passes
each), which keeps the report at archive scale within a minute with NIH's box file. Ties in the
heatmap (e.g. its zero regions) are ordered at random too. Whether a finding's maps beat random
is decided per image, paired: Wilcoxon's signed-rank test of the deletion AUC below the random
order's, one-sided, at :data:`ALPHA` (an untrained network's maps differ from random by noise,
and a mean alone would call half of them better).
"""

from __future__ import annotations

import zlib

import numpy as np

__all__ = [
    "ALPHA",
    "MAX_IMAGES",
    "GRID",
    "STEPS",
    "deletion_aucs",
    "deletion_curves",
    "faithfulness",
    "summarise",
]

ALPHA = 0.05
MAX_IMAGES = 20
GRID = 16
STEPS = 16
_BATCH = 64


def _orders(images: np.ndarray, maps: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per image, the cells hottest first (ties at random) and a random order."""
    n, size = maps.shape[0], maps.shape[1]
    edges = np.linspace(0, size, GRID + 1).round().astype(int)
    cells = np.add.reduceat(np.add.reduceat(maps, edges[:-1], axis=1), edges[:-1], axis=2)
    areas = np.outer(np.diff(edges), np.diff(edges))
    heat = (cells / areas).reshape(n, -1)
    hottest, shuffled = [], []
    for image, cells_heat in zip(images, heat, strict=True):
        rng = np.random.default_rng([seed, zlib.crc32(np.ascontiguousarray(image).tobytes())])
        hottest.append(np.lexsort((rng.random(GRID * GRID), -cells_heat)))
        shuffled.append(rng.permutation(GRID * GRID))
    return np.stack(hottest), np.stack(shuffled)


def _cell_masks(size: int) -> np.ndarray:
    """``bool (GRID * GRID, size, size)``: each cell's pixels."""
    edges = np.linspace(0, size, GRID + 1).round().astype(int)
    masks = np.zeros((GRID * GRID, size, size), bool)
    for k in range(GRID * GRID):
        row, col = divmod(k, GRID)
        masks[k, edges[row] : edges[row + 1], edges[col] : edges[col + 1]] = True
    return masks


def deletion_curves(model, images: np.ndarray, orders: np.ndarray, output: int) -> np.ndarray:
    """Scores ``(N, STEPS + 1)`` as the cells of each image are removed in ``orders``.

    Args:
        model: A classifier taking ``uint8 (N, S, S, 1)`` and giving probabilities ``(N, K)``.
        images: ``uint8 (N, S, S, 1)``.
        orders: ``(N, GRID * GRID)`` cell indices, first removed first.
        output: Index of the finding.
    """
    from medai.occlusion import blurred

    masks = _cell_masks(images.shape[1])
    fill = blurred(images)
    counts = np.linspace(0, GRID * GRID, STEPS + 1).round().astype(int)
    steps = []
    for image, smooth, order in zip(images, fill, orders, strict=True):
        for count in counts:
            removed = masks[order[:count]].any(axis=0)[..., None]
            steps.append(np.where(removed, smooth, image))
    stacked = np.stack(steps)
    scores = [
        np.asarray(model(stacked[at : at + _BATCH], training=False))[:, output]
        for at in range(0, len(stacked), _BATCH)
    ]
    return np.concatenate(scores).astype(np.float64).reshape(len(images), STEPS + 1)


def _auc(curves: np.ndarray) -> np.ndarray:
    """Area under each curve over the fraction removed, 0 to 1 (trapezoidal)."""
    return (curves[:, :-1] + curves[:, 1:]).sum(axis=1) / (2 * STEPS)


def deletion_aucs(
    model, images: np.ndarray, maps: np.ndarray, output: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Per image, the deletion AUC of its heatmap's order and of a random order.

    Args:
        model: The classifier the maps explain.
        images: ``uint8 (N, S, S, 1)``.
        maps: ``(N, S, S)`` heatmaps of ``output``.
        output: Index of the finding.
        seed: Seed of the random orders and of the heatmap's tie-breaking.

    Returns:
        ``(deletion, random)``, each ``float64 (N,)``.
    """
    if len(images) == 0:
        return np.zeros(0), np.zeros(0)
    hottest, shuffled = _orders(images, np.asarray(maps, np.float64), seed)
    both = deletion_curves(
        model, np.concatenate([images, images]), np.concatenate([hottest, shuffled]), output
    )
    return _auc(both[: len(images)]), _auc(both[len(images) :])


def summarise(deletion: np.ndarray, random: np.ndarray, method: str) -> dict:
    """metrics.json's ``faithfulness`` entry: mean AUCs, images and method.

    ``p_value`` is Wilcoxon's one-sided signed-rank test of the per-image deletion AUCs
    below the random order's (1.0 when every difference is zero); ``better_than_random``
    whether it is below :data:`ALPHA`; ``images_below_random`` the share of images whose own
    deletion AUC lies below the random order's.
    """
    from scipy.stats import wilcoxon

    n = int(len(deletion))
    entry = {"deletion_auc": None, "random_deletion_auc": None, "n": n, "method": method}
    entry |= {"better_than_random": None, "images_below_random": None, "p_value": None}
    if n:
        differences = np.asarray(deletion) - np.asarray(random)
        p = 1.0 if not differences.any() else wilcoxon(differences, alternative="less").pvalue
        entry |= {
            "deletion_auc": float(np.mean(deletion)),
            "random_deletion_auc": float(np.mean(random)),
            "better_than_random": bool(p < ALPHA),
            "images_below_random": float(np.mean(differences < 0)),
            "p_value": float(p),
        }
    return entry


def faithfulness(
    model, images: np.ndarray, maps: np.ndarray, output: int, method: str, limit: int = MAX_IMAGES
) -> dict:
    """:func:`deletion_aucs` of one finding's maps, summarised (:func:`summarise`), over at
    most ``limit`` of the images, spread evenly over them."""
    if len(images) > limit:
        chosen = np.linspace(0, len(images) - 1, limit).round().astype(int)
        images, maps = images[chosen], maps[chosen]
    return summarise(*deletion_aucs(model, images, maps, output), method)
