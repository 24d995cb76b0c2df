"""This host's RAM, /dev/shm and CPUs, read live (psutil and statvfs)."""

from __future__ import annotations

import os

import psutil

from avatardoctor.machine.model import Host

SHM_PATH = "/dev/shm"


def local_host() -> Host:
    vm = psutil.virtual_memory()
    shm_total: int | None
    shm_free: int | None
    cpus: int | None
    try:
        st = os.statvfs(SHM_PATH)
        shm_total, shm_free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    except OSError:  # no /dev/shm (not Linux, or a minimal container)
        shm_total = shm_free = None
    try:
        cpus = len(os.sched_getaffinity(0))  # honours cpusets (containers, Slurm)
    except AttributeError:
        cpus = os.cpu_count()
    return Host(
        cpu_count=cpus,
        ram_total_bytes=vm.total,
        ram_available_bytes=vm.available,
        swap_total_bytes=psutil.swap_memory().total,
        shm_total_bytes=shm_total,
        shm_free_bytes=shm_free,
    )
