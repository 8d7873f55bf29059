"""CPU and node sizing, in one place: what this process may use, and what Ray grants and has.

Outside Ray: :func:`usable_cpus`, the affinity mask capped by the container's CPU limit.
Inside Ray: the resources Ray assigned to this worker or actor (:func:`assigned_resources`),
the cluster's CPUs and GPUs, its live nodes and this node's CPUs; and from those the jobs'
plans: Ray Train's workers (:func:`plan_workers`) and the scorer's actors (:func:`plan_actors`).
No function here imports Ray unless Ray is already imported (or, for the cluster figures,
the caller runs a Ray job).

A container (a Kubernetes pod with a CPU limit) sees the host's cores in its affinity mask and in
``os.cpu_count()`` but may use only its quota. Sizing thread pools, process pools or Ray's warm
worker pool by the host's cores would start, on a 64-core host, thirty times what a 2-CPU pod
can run. Ray's own CPU detection reads the same cgroup limit.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "CGROUP",
    "ActorPlan",
    "WorkerPlan",
    "alive_nodes",
    "assigned_cpus",
    "assigned_resources",
    "cgroup_cpu_limit",
    "cluster_cpus",
    "cluster_gpus",
    "node_cpus",
    "plan_actors",
    "plan_workers",
    "usable_cpus",
]

CGROUP = Path("/sys/fs/cgroup")


def usable_cpus(cgroup: Path = CGROUP) -> int:
    """CPUs this process may use: its affinity mask, capped by its cgroup's CPU limit.

    Args:
        cgroup: Where the cgroup filesystem is mounted.

    Returns:
        At least 1; a fractional limit rounds up (1.5 CPUs keep two threads busy part-time).
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity masks
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(cgroup)
    return max(1, min(cpus, math.ceil(limit))) if limit else cpus


def cgroup_cpu_limit(cgroup: Path = CGROUP) -> float | None:
    """The CPU limit of this process's cgroup in CPUs, ``None`` when there is none.

    Reads cgroup v2's ``cpu.max`` (``"200000 100000"``: 2 CPUs; ``"max 100000"``: no limit),
    else cgroup v1's ``cpu/cpu.cfs_quota_us`` over ``cpu/cpu.cfs_period_us`` (-1: no limit).

    Args:
        cgroup: Where the cgroup filesystem is mounted.
    """
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def assigned_resources() -> dict[str, float] | None:
    """Resources Ray assigned to this worker or actor; ``None`` outside one (never imports Ray).

    Host core counts (``os.cpu_count``, ``os.sched_getaffinity``) describe the machine, not
    this process's share: a pod limited to 8 CPUs on a 64-core host would otherwise start 64
    threads. Ray's assignment is what the scheduler reserved for this process.
    """
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    try:
        return dict(ray.get_runtime_context().get_assigned_resources())
    except Exception:  # the driver has no assignment (Ray asserts on it)
        return None


def assigned_cpus(default: float | None = None) -> float | None:
    """CPUs Ray assigned to the current worker or actor, or ``default`` outside Ray.

    Args:
        default: Returned when not inside a Ray task or actor, or when Ray assigned no CPU.
    """
    assigned = assigned_resources()
    cpus = float(assigned.get("CPU", 0.0)) if assigned else 0.0
    return cpus or default


def cluster_cpus() -> float:
    """CPUs of the connected Ray cluster."""
    import ray

    return float(ray.cluster_resources().get("CPU", 0.0))


def cluster_gpus() -> float:
    """GPUs of the connected Ray cluster."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def alive_nodes() -> int:
    """Live nodes of the connected Ray cluster (at least 1)."""
    import ray

    return max(1, sum(1 for node in ray.nodes() if node.get("Alive")))


def node_cpus() -> float | None:
    """CPUs Ray registered for the node this process runs on, or ``None`` outside Ray.

    Ray's figure, not the host's core count: in a pod it is the pod's CPU limit.
    """
    import ray

    if not ray.is_initialized():
        return None
    here = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == here:
            return float(node.get("Resources", {}).get("CPU", 0.0)) or None
    return None


class WorkerPlan(NamedTuple):
    """Ray Train's workers: how many, the CPUs each reserves, and whether each has a GPU."""

    workers: int
    cpus_per_worker: float
    use_gpu: bool


def plan_workers(requested: int | None = None) -> WorkerPlan:
    """Ray Train's workers on the connected cluster.

    Default: one worker per GPU, else one per live node (a worker uses all of its node's
    cores). A sliver of the CPUs is left to Ray Data, so that as many workers as CPUs cannot
    starve the pipeline.

    Args:
        requested: ``--num-workers``; ``None``: the default above.
    """
    gpus, cpus = int(cluster_gpus()), cluster_cpus()
    workers = requested or gpus or alive_nodes()
    per_worker = max(0.25, math.floor((cpus * 0.9 / workers) * 4) / 4)
    return WorkerPlan(workers, per_worker, gpus >= workers)


class ActorPlan(NamedTuple):
    """The scorer's actors: how many, the CPUs and GPUs each reserves, and how many per node."""

    actors: int
    cpus: float
    gpus: float
    per_node: int


def plan_actors(requested: int | None, engine: str, actor_cpus) -> ActorPlan:
    """The scorer's actors on the connected cluster.

    TensorFlow on GPUs: one actor per GPU, each with one GPU and one CPU. Otherwise (OpenVINO
    actors are CPU actors, as hungry as TensorFlow's) one actor per live node, each with the
    CPUs ``actor_cpus(cluster CPUs, nodes, actors)`` grants.

    Args:
        requested: ``--actors``; ``None``: the default above.
        engine: The resolved engine (``openvino`` or ``tensorflow``).
        actor_cpus: The scorer's CPU share per actor (it knows what reading and decoding need).
    """
    gpus, nodes = int(cluster_gpus()), alive_nodes()
    if gpus and engine == "tensorflow":
        actors = requested or gpus
        return ActorPlan(actors, 1.0, 1.0, math.ceil(actors / nodes))
    actors = requested or nodes
    return ActorPlan(
        actors, actor_cpus(cluster_cpus(), nodes, actors), 0.0, math.ceil(actors / nodes)
    )
