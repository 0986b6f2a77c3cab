"""Pin the benchmark's processes to fixed CPU cores (Linux only; benchmarks only).

A small model on a fast GPU is host-bound: each vLLM engine-core process runs its scheduler in one busy Python thread,
and where the kernel schedules that thread (which core, which NUMA node, shared with which other busy thread) moves a
call's wall time by tens of percent and can differ for the whole life of one engine. Giving the driver and every
engine its own physical cores, on the GPU's NUMA node where the machine says which that is, removes that variable
from an A/B comparison of engines.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

SYS_CPU = Path("/sys/devices/system/cpu")


def parse_cpulist(text: str) -> list[int]:
    """CPU numbers of a Linux cpulist (``"0-3,8,10-11"``), in order, without repeats."""
    out: list[int] = []
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ValueError(f"--pin-cpus: {part!r} is not a CPU number or range; pass e.g. 0-15 or 0,2,4-7 or auto") from None
        if first < 0 or last < first:
            raise ValueError(f"--pin-cpus: {part!r} is not an increasing range of CPU numbers; pass e.g. 0-15")
        out.extend(c for c in range(first, last + 1) if c not in out)
    if not out:
        raise ValueError(f"--pin-cpus: {text!r} names no CPU; pass e.g. 0-15 or auto")
    return out


def physical_cores(cpus: list[int], sys_cpu: Path = SYS_CPU) -> list[int]:
    """One logical CPU per physical core among ``cpus`` (the first hyperthread sibling seen), in order."""
    seen: set[frozenset[int]] = set()
    out = []
    for cpu in cpus:
        try:
            siblings = frozenset(parse_cpulist((sys_cpu / f"cpu{cpu}" / "topology" / "thread_siblings_list").read_text()))
        except (OSError, ValueError):
            siblings = frozenset({cpu})
        if siblings not in seen:
            seen.add(siblings)
            out.append(cpu)
    return out


def gpu_local_cpus(index: int = 0) -> list[int] | None:
    """The CPUs on the NUMA node of visible GPU ``index`` (from its PCI device), or None where that is unknown."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else []
    target = ids[index] if index < len(ids) else str(index)
    try:
        bus = (
            subprocess.run(
                ["nvidia-smi", "--query-gpu=pci.bus_id", "--format=csv,noheader", "-i", target],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
            .stdout.strip()
            .splitlines()[0]
        )
    except (OSError, subprocess.SubprocessError, IndexError):
        return None
    domain, _, rest = bus.partition(":")  # 00000000:18:00.0 -> 0000:18:00.0
    path = Path("/sys/bus/pci/devices") / f"{domain[-4:]}:{rest}".lower() / "local_cpulist"
    try:
        return parse_cpulist(path.read_text())
    except (OSError, ValueError):
        return None


def plan(cpus: list[int], engines: list[str], driver_cores: int = 2) -> dict[str, list[int]]:
    """Split ``cpus`` into disjoint sets: ``driver_cores`` for the driver, the rest evenly over ``engines``."""
    per = (len(cpus) - driver_cores) // len(engines) if engines else 0
    if per < 1:
        raise ValueError(
            f"--pin-cpus: {len(cpus)} cores cannot give the driver {driver_cores} and each of {len(engines)} engines one; "
            "name more CPUs or drop --pin-cpus"
        )
    out = {"driver": cpus[:driver_cores]}
    for i, name in enumerate(engines):
        out[name] = cpus[driver_cores + i * per : driver_cores + (i + 1) * per]
    return out


def process_tree(pid: int) -> list[int]:
    """``pid`` and every descendant process (tensor-parallel workers are children of the engine-core process)."""
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        if p in out:
            continue
        out.append(p)
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                stack.extend(int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split())
            except OSError:
                pass
    return out


def pin_process(pid: int, cpus: list[int]) -> int:
    """Set the affinity of every thread of ``pid`` (threads started later inherit it). Returns the threads pinned."""
    n = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(task), cpus)
            n += 1
        except OSError:  # the thread ended meanwhile
            pass
    return n


def engine_core_pids(llm: Any) -> list[int]:
    """The engine-core process ids of a ``vllm.LLM`` (multiprocessing V1 engine), or [] with an in-process core."""
    core = llm.llm_engine.engine_core
    manager = getattr(getattr(core, "resources", None), "engine_manager", None)
    return [p.pid for p in (getattr(manager, "processes", None) or []) if p.pid]


def pin_all(spec: str, engines: dict[str, Any]) -> dict[str, Any]:
    """Pin the driver (this process) and each named ``vllm.LLM``'s processes per ``spec`` ("auto" or a cpulist).

    "auto": the physical cores of the GPU's NUMA node that this process may use (all of them where the node is
    unknown). Returns the assignment, for the benchmark's JSON.
    """
    allowed = sorted(os.sched_getaffinity(0))
    if spec == "auto":
        local = gpu_local_cpus() or allowed
        cpus = [c for c in local if c in allowed] or allowed
    else:
        cpus = parse_cpulist(spec)
        missing = sorted(set(cpus) - set(allowed))
        if missing:
            raise ValueError(f"--pin-cpus: CPUs {missing} are not available to this process (allowed: {allowed[:8]}...)")
    cores = physical_cores(cpus)
    sets = plan(cores, list(engines))
    processes: dict[str, list[int]] = {}
    threads = 0
    for name, llm in engines.items():
        pids = [p for root in engine_core_pids(llm) for p in process_tree(root)]
        if not pids:
            raise RuntimeError(f"--pin-cpus: engine {name} has no engine-core process to pin (in-process engine core?)")
        processes[name] = pids
        threads += sum(pin_process(p, sets[name]) for p in pids)
    threads += pin_process(os.getpid(), sets["driver"])
    return {"spec": spec, "cpus": cpus, "physical_cores": cores, "sets": sets, "processes": processes, "threads_pinned": threads}
