"""What CPU this process runs on: model name, cores, and the ISA flags that decide CPU speed.

Benchmark result files record :func:`cpu_facts` so figures from an AVX2 laptop and an AMX
server are never compared as if equal, and engines read :func:`isa_flags` to know whether a
reduced precision has native kernels. Reads ``/proc/cpuinfo`` (Linux) with the standard
library only; elsewhere the flags are empty and the name comes from :mod:`platform`.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import Any

#: The flags that matter for diffusion on CPUs: fp32 SIMD width, bf16/int8 dot products, AMX.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16",
             "amx_int8", "amx_tile")
CPUINFO = Path("/proc/cpuinfo")


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """Model name, logical/physical core counts and the full flag set of a cpuinfo text."""
    name, flags = "", set()
    logical, cores, phys = 0, set(), ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "processor":
            logical += 1
        elif key == "model name" and not name:
            name = value
        elif key == "flags" and not flags:  # every core lists the same flags; read the first
            flags = set(value.split())
        elif key == "physical id":
            phys = value
        elif key == "core id":
            cores.add((phys, value))
    return {"model": name, "logical": logical, "physical": len(cores) or logical, "flags": flags}


@functools.lru_cache(maxsize=1)
def _read() -> dict[str, Any]:
    try:
        info = parse_cpuinfo(CPUINFO.read_text())
    except OSError:  # not Linux, or /proc not mounted
        info = {"model": "", "logical": 0, "physical": 0, "flags": set()}
    info["model"] = info["model"] or platform.processor() or platform.machine() or "unknown cpu"
    info["logical"] = info["logical"] or os.cpu_count() or 1
    info["physical"] = info["physical"] or info["logical"]
    return info


def cpu_model() -> str:
    """The CPU's model name, e.g. ``"AMD EPYC"`` or ``"Intel(R) Xeon(R) Platinum 8480+"``."""
    return _read()["model"]


def isa_flags() -> tuple[str, ...]:
    """Which of :data:`ISA_FLAGS` this CPU reports, in that order."""
    flags = _read()["flags"]
    return tuple(f for f in ISA_FLAGS if f in flags)


def has_flag(flag: str) -> bool:
    """Whether the CPU reports ``flag`` (any /proc/cpuinfo flag name)."""
    return flag in _read()["flags"]


def cpu_facts() -> dict[str, Any]:
    """The record every benchmark result carries: model, core counts, ISA flags, usable CPUs."""
    info = _read()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    return {"cpu": info["model"], "physical_cores": info["physical"],
            "logical_cpus": info["logical"], "usable_cpus": usable, "isa": list(isa_flags()),
            "machine": platform.machine()}


def machine_key() -> str:
    """A short stable key of this CPU (model + ISA flags + cores), for per-machine caches."""
    f = cpu_facts()
    return f"{f['cpu']}|{','.join(f['isa'])}|{f['physical_cores']}c"
