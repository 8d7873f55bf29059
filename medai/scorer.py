"""The scorer actor: loads an inference engine once per Ray Data actor, then scores batches.

Its threads come from Ray's view of its node (:func:`actor_threads`), never the host's cores;
its CPU request (:func:`actor_cpus`) leaves room for reading and decoding beside it.
"""

from __future__ import annotations

import math

import numpy as np

from medai.card import card_findings, read_card
from medai.score_config import ScoreError

__all__ = ["Scorer", "actor_cpus", "actor_threads"]


class Scorer:
    """Ray Data actor: loads an inference engine once, then scores batches of decoded images.

    Its output ``score`` column is ``float32 (N, n_findings)``: every finding of an image from
    one forward pass; rows without a usable image get NaN.
    """

    def __init__(
        self,
        model_dir: str,
        precision: str,
        threads: int | None,
        engine: str = "auto",
        actors_per_node: int = 1,
    ):
        from medai.engines import load_engine
        from medai.runtime import setup_logging

        setup_logging()  # medai's warnings from this actor reach the console (medai.console)
        card = read_card(model_dir)
        if threads is None:
            threads = actor_threads(actors_per_node)
        # load_engine imports TensorFlow only for the TensorFlow engine (sized to `threads`).
        self._engine = load_engine(model_dir, engine, precision, threads)
        self._findings = len(card_findings(card))
        if self._engine.n_outputs != self._findings:
            raise ScoreError(
                f"{model_dir}: the model has {self._engine.n_outputs} outputs but its card "
                f"lists {self._findings} findings"
            )

    def __call__(self, batch: dict) -> dict:
        """Score the usable rows of a batch; other rows get NaN scores."""
        errors = np.asarray(batch["error"], dtype=object)
        usable = (errors == "") & ~np.asarray(batch["skip"], dtype=bool)
        scores = np.full((len(errors), self._findings), np.nan, dtype=np.float32)
        if usable.any():
            images = np.asarray(batch["image"])[usable]
            scores[usable] = self._engine.predict(images)
        n = len(errors)
        # Every column but the pixels passes on (the DICOM header's `meta`, `ignored`, ...).
        passed = {name: values for name, values in batch.items() if name != "image"}
        return {
            **passed,
            "score": scores,
            "engine": [self._engine.name] * n,
            "precision": [self._engine.precision] * n,
        }


def actor_threads(actors_per_node: int) -> int | None:
    """Inference threads for a scorer actor: its node's CPUs shared among the node's actors.

    Ray reserves at most one CPU per actor so that reading and decoding always fit, but
    decoding does not keep the remaining cores busy: on 2 cores one OpenVINO thread per actor
    measured 36 img/s (bf16) and two threads 43. The count comes from Ray's view of the node
    (a pod's CPU limit), never the host's core count, and is at least the actor's own share.
    Outside Ray: ``None``, the engine's default.

    Args:
        actors_per_node: Scorer actors placed on each node.
    """
    from medai.cpus import assigned_cpus, node_cpus

    cpus = assigned_cpus()
    if not cpus:
        return None
    node = node_cpus() or cpus
    return max(1, math.ceil(cpus), math.floor(node / max(1, actors_per_node)))


def actor_cpus(cpus: float, nodes: int, actors: int) -> float:
    """CPUs to request per CPU scorer actor.

    Up to one CPU is reserved per actor (TensorFlow's threads also use a node's idle cores),
    but one read task and one decode task per node must always fit beside the actors: a read
    task streaming an archive holds its CPUs while it waits for decoding to catch up, so a
    node without room for a decode task deadlocks. The request also differs from the decode
    tasks', or Ray Data fuses decoding into the actor, where it runs serially.

    Args:
        cpus: CPUs of the cluster.
        nodes: Alive nodes.
        actors: Scorer actors requested.

    Raises:
        ScoreError: When the actors leave no room for reading and decoding.
    """
    from medai.datasets import DECODE_CPUS, READ_CPUS

    share = min(1.0, (cpus - nodes * (READ_CPUS + DECODE_CPUS)) / actors)
    if share < 0.05:
        raise ScoreError(
            f"--actors {actors} leaves no CPU for reading and decoding on {cpus:g} CPUs; "
            "use fewer actors"
        )
    return share - 0.01 if share in (READ_CPUS, DECODE_CPUS) else share
