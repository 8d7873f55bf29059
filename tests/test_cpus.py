"""Usable CPUs: the affinity mask capped by a container's CPU limit, read from real files."""

from __future__ import annotations

import os

from medai.cpus import cgroup_cpu_limit, usable_cpus


def test_usable_cpus_respect_a_container_cpu_limit(tmp_path) -> None:
    """A pod's CPU limit caps the usable CPUs; no limit leaves the affinity mask."""
    affinity = len(os.sched_getaffinity(0))
    v2, v1, none = tmp_path / "v2", tmp_path / "v1" / "cpu", tmp_path / "none"
    v2.mkdir()
    v1.mkdir(parents=True)
    (v2 / "cpu.max").write_text("150000 100000\n")
    (v1 / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(v2) == 1.5 and usable_cpus(v2) == min(affinity, 2)
    assert cgroup_cpu_limit(v1.parent) == 1.0 and usable_cpus(v1.parent) == 1
    assert cgroup_cpu_limit(none) is None and usable_cpus(none) == affinity
    (v2 / "cpu.max").write_text("max 100000\n")
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(v2) is None and cgroup_cpu_limit(v1.parent) is None


def test_local_rays_warm_workers_follow_usable_cpus() -> None:
    """Without a CPU count, a local Ray's warm-worker pool follows the usable CPUs."""
    from medai.runtime import idle_workers

    assert idle_workers(None) == usable_cpus() + 6
    assert idle_workers(3) == 9
