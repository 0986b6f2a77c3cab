"""CPU pinning for the benchmark (bench/cpu_pin.py): cpulists, physical cores, the split, pinning real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from bench import cpu_pin


def test_parse_cpulist_reads_ranges_and_singles_in_order():
    assert cpu_pin.parse_cpulist("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    assert cpu_pin.parse_cpulist("5,1-2,2") == [5, 1, 2]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a-3", "'a-3' is not a CPU number or range"),
        ("4-2", "'4-2' is not an increasing range"),
        (" , ", "names no CPU"),
        ("-1", "is not"),
    ],
)
def test_parse_cpulist_names_the_bad_part(text, message):
    with pytest.raises(ValueError, match="--pin-cpus: .*" + message.replace("(", r"\(")):
        cpu_pin.parse_cpulist(text)


def test_physical_cores_keeps_one_hyperthread_per_core(tmp_path):
    for cpu, siblings in {0: "0,4", 1: "1,5", 4: "0,4", 5: "1,5", 2: "2"}.items():
        topo = tmp_path / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "thread_siblings_list").write_text(siblings + "\n")
    assert cpu_pin.physical_cores([0, 4, 1, 5, 2, 9], sys_cpu=tmp_path) == [0, 1, 2, 9]  # cpu9: no topology, kept


def test_plan_gives_the_driver_and_each_engine_disjoint_cores():
    sets = cpu_pin.plan(list(range(16)), ["a", "b", "c"])
    assert sets == {"driver": [0, 1], "a": [2, 3, 4, 5], "b": [6, 7, 8, 9], "c": [10, 11, 12, 13]}
    with pytest.raises(ValueError, match="4 cores cannot give the driver 2 and each of 3 engines one"):
        cpu_pin.plan([0, 1, 2, 3], ["a", "b", "c"])


def test_pin_process_pins_every_thread_of_a_process_and_its_children():
    code = (
        "import subprocess, sys, threading, time\n"
        "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        child = int(proc.stdout.readline())
        time.sleep(0.2)
        tree = cpu_pin.process_tree(proc.pid)
        assert tree == [proc.pid, child]
        target = [min(os.sched_getaffinity(0))]
        threads = sum(cpu_pin.pin_process(pid, target) for pid in tree)
        assert threads >= 3  # main + sleeper thread of the parent, main of the child
        for pid in tree:
            for task in os.listdir(f"/proc/{pid}/task"):
                assert os.sched_getaffinity(int(task)) == set(target), (pid, task)
    finally:
        for pid in cpu_pin.process_tree(proc.pid)[::-1]:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        proc.wait()


def test_engine_core_pids_reads_the_engine_manager_and_accepts_an_in_process_core():
    llm = SimpleNamespace(
        llm_engine=SimpleNamespace(
            engine_core=SimpleNamespace(
                resources=SimpleNamespace(engine_manager=SimpleNamespace(processes=[SimpleNamespace(pid=42)]))
            )
        )
    )
    assert cpu_pin.engine_core_pids(llm) == [42]
    assert cpu_pin.engine_core_pids(SimpleNamespace(llm_engine=SimpleNamespace(engine_core=object()))) == []


def test_benchmark_refuses_a_malformed_pin_cpus_before_starting_engines(tmp_path):
    from bench import run

    with pytest.raises(SystemExit, match="--pin-cpus: 'x' is not a CPU number or range"):
        run.main(["--model", "random:qwen3-tiny", "--work-dir", str(tmp_path), "--pin-cpus", "0-1,x"])
