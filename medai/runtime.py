"""Process set-up at the edges: starting or joining Ray, and sizing TensorFlow to its CPU share.

Everything here has side effects on the process; library functions never call it themselves,
only job entry points, Ray workers and actors.
"""

from __future__ import annotations

import contextlib
import math
import os

from medai.console import is_verbose, quiet_ray_data, ray_logging_level, setup_logging
from medai.cpus import assigned_cpus, cluster_cpus, cluster_gpus, node_cpus  # re-exported

__all__ = [
    "LOCAL_RAY_HOST",
    "QUIET_ENV",
    "quiet_tensorflow",
    "configure_tensorflow",
    "init_ray",
    "idle_workers",
    "cluster_cpus",
    "assigned_cpus",
    "cluster_gpus",
    "node_cpus",
    "setup_logging",
]

# A local Ray started by medai serves only this machine: its GCS, raylet, object manager, agents
# and dashboard listen on this address and nowhere else.
LOCAL_RAY_HOST = "127.0.0.1"

# TensorFlow's C++ INFO/WARNING banners (oneDNN, CUDA probing) repeat in every Ray worker.
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore::DeprecationWarning"}


def quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ banners in this process (call before importing TensorFlow);
    not when verbose (:mod:`medai.console`)."""
    if is_verbose():
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def configure_tensorflow(num_cpus: float | None) -> None:
    """Size TensorFlow's thread pools to this process's CPU share and enable GPU memory growth.

    Inside Ray workers TensorFlow otherwise starts one thread per core of the machine in every
    worker, which oversubscribes the CPUs. Must run before TensorFlow executes any op.

    Args:
        num_cpus: The CPUs Ray granted this worker or actor (fractions round up); ``None``
            leaves TensorFlow's defaults.
    """
    quiet_tensorflow()
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    if num_cpus:
        threads = max(1, math.ceil(num_cpus))
        # RuntimeError: already initialised in this process (a reused actor): keep what it has.
        with contextlib.suppress(RuntimeError):
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
    for gpu in tf.config.list_physical_devices("GPU"):
        # Without growth TensorFlow takes all GPU memory, starving co-located actors.
        with contextlib.suppress(RuntimeError):
            tf.config.experimental.set_memory_growth(gpu, True)


def init_ray(
    address: str | None = None, num_cpus: int | None = None, dashboard: bool = True
) -> None:
    """Join the Ray cluster at ``address`` (or ``RAY_ADDRESS``), or start a local one in-process.

    Args:
        address: ``auto``, ``ray://...`` or a head address; ``None`` uses ``RAY_ADDRESS`` if
            set, otherwise starts a local Ray.
        num_cpus: CPUs of a local Ray (ignored when joining a cluster).
        dashboard: Start the dashboard with a local Ray. Ray Train needs it (its clean-up
            polls the state API the dashboard hosts); scoring does not, and on a laptop the
            dozen processes it starts compete with the job's own start-up.

    A local Ray listens on 127.0.0.1 only (:data:`LOCAL_RAY_HOST`), and keeps Ray's token
    authentication (on by default for local clusters since Ray 2.59; ``RAY_AUTH_MODE`` is left
    to the user).
    """
    import ray
    import ray.data

    # Ray Data logs each dataset's plan and, on non-interactive terminals, progress every few
    # seconds; medai logs its own counts and progress instead (its session log keeps them).
    quiet_ray_data()
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    # A local Ray's workers inherit this process's environment; passing the same variables as
    # a runtime_env instead costs every worker a runtime-env round trip (~1 s of start-up).
    quiet_tensorflow()
    if address:
        # A submitted job already has its runtime env; adding one here would conflict with it.
        ray.init(address=address, log_to_driver=True, logging_level=ray_logging_level())
    else:
        with _loopback_node_ip():
            ray.init(
                num_cpus=num_cpus,
                include_dashboard=dashboard,
                dashboard_host=LOCAL_RAY_HOST,
                _node_ip_address=LOCAL_RAY_HOST,
                log_to_driver=True,
                logging_level=ray_logging_level(),
                _system_config={"num_workers_soft_limit": idle_workers(num_cpus)},
            )


def idle_workers(num_cpus: int | None) -> int:
    """How many idle Python workers a local Ray keeps warm between tasks.

    Ray's default keeps one per CPU and kills the others after a second idle, but a scoring
    pipeline alternates read, decode and write tasks beside its actors and Ray Data's own:
    on 2 cores a 1,000-image run started 11-13 workers (each imports Ray Data, pyarrow and
    Pillow again, ~0.5 s of CPU) where 8 warm workers needed 6, and OpenVINO bf16 scored
    29-30 instead of 26-28 images/s. The pipeline needs a fixed number of extra workers, not
    one per core, so six are added to Ray's default. An idle worker showed 350-370 MB RSS,
    much of it the shared object store mapping.

    Args:
        num_cpus: CPUs of the local Ray; ``None``: those this process may use
            (:func:`medai.cpus.usable_cpus`: a container's CPU limit, not the host's cores).
    """
    from medai.cpus import usable_cpus

    return (num_cpus or usable_cpus()) + 6


@contextlib.contextmanager
def _loopback_node_ip():
    """Let a local ``ray.init`` keep 127.0.0.1 as its node IP address.

    Ray 2.60 binds the GCS, raylet, object manager, workers and agents to the node IP address,
    but ``ray.init(_node_ip_address="127.0.0.1")`` replaces a loopback address with the host's
    routable one (so that other nodes could join), and every server then listens on all
    interfaces. That replacement is skipped when Ray clusters are disabled
    (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read once at import into
    ``ray_constants.ENABLE_RAY_CLUSTER``), as on macOS and Windows. A single-machine Ray needs
    no other node, so the flag is lowered for the start-up only and restored after.
    """
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
