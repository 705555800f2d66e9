"""Stop `recordline dev` at random moments of start-up, count what `ps` still lists.

    python3 dev.py bench stops [--runs 20] [--seed N]

Needs the Pub/Sub emulator (Java). Each run starts `recordline dev` in a
terminal of its own (a pseudo-terminal, tests/processes.py) and stops it as a
user would: a Ctrl-C typed into it, and, for the last run, the terminal
closing (SIGHUP). The first run goes all the way to the banner and measures
how long start-up takes here; the others are stopped at a moment drawn
uniformly from that span, so every phase is hit: the interpreter starting,
the JVM booting, the service starting, the topology being wired, the stack
running. After each, `ps` must list nothing of the run's session, nor any
process naming its ports or its directory (zombies included), and its two
ports must be free again.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from recordline_dev.devstack import find_emulator
from recordline_dev.processes import EmulatorNotFound, port_is_free
from tests.processes import BANNER, STOP_SECONDS, dev_terminal, wait_until_gone

# What a run printed last before the stop, in start-up order.
PHASES = (
    ("starting the service", "service starting"),
    ("starting the Pub/Sub emulator", "JVM booting"),
)


def phase(output: str) -> str:
    if BANNER in output:
        return "running"
    for line, name in PHASES:
        if line in output:
            return name
    return "interpreter starting"


def one_run(data: Path, *, how: str, delay: float | None) -> dict[str, object]:
    terminal, port, emulator_port = dev_terminal(data)
    started = time.monotonic()
    if delay is None:
        if not terminal.wait_for(BANNER, timeout=180):
            terminal.kill_everything()
            raise SystemExit(f"no banner in 180 s:\n{terminal.output}")
        delay = time.monotonic() - started
    else:
        time.sleep(delay)
    reached = phase(terminal.output)
    stopping = time.monotonic()
    if how == "ctrl-c":
        terminal.ctrl_c()
    else:
        terminal.close()
    try:
        status: int | str = terminal.wait(STOP_SECONDS)
    except subprocess.TimeoutExpired:
        status = "hung"
    stop_seconds = time.monotonic() - stopping
    left = wait_until_gone(terminal.session, terminal.markers, timeout=5)
    if left:
        terminal.kill_everything()
    terminal.close()
    return {
        "how": how,
        "at": delay,
        "phase": reached,
        "status": status,
        "stop_s": stop_seconds,
        "left": left,
        "ports_free": port_is_free(port) and port_is_free(emulator_port),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench stops", description=__doc__)
    parser.add_argument("--runs", type=int, default=20, help="Ctrl-C runs (default 20)")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args(argv)
    try:
        find_emulator()
    except EmulatorNotFound as exc:
        print(f"bench stops: {exc}", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    print(f"seed {args.seed}")
    results = []
    with tempfile.TemporaryDirectory(prefix="recordline-stops-") as tmp:
        data = Path(tmp)
        first = one_run(data, how="ctrl-c", delay=None)
        results.append(first)
        span = float(first["at"])  # type: ignore[arg-type]
        print(f"start-up to the banner: {span:.1f} s; stops drawn from [0, {span:.1f}] s")
        plan = [("ctrl-c", rng.uniform(0, span)) for _ in range(args.runs - 1)]
        plan.append(("terminal closes", rng.uniform(0, span)))
        for how, delay in plan:
            results.append(one_run(data, how=how, delay=delay))
            r = results[-1]
            print(
                f"  {r['how']:<15} at {r['at']:5.2f} s ({r['phase']:<20}) exit {r['status']!s:>4}"
                f"  stopped in {r['stop_s']:4.1f} s  left {len(r['left'])}"  # type: ignore[arg-type]
                f"  ports {'free' if r['ports_free'] else 'TAKEN'}"
            )
        sessions = sum(1 for _ in (data / "sessions").iterdir())
    left = [p for r in results for p in r["left"]]  # type: ignore[attr-defined]
    hung = sum(r["status"] == "hung" for r in results)
    taken = sum(not r["ports_free"] for r in results)
    phases: dict[str, int] = {}
    for r in results:
        phases[str(r["phase"])] = phases.get(str(r["phase"]), 0) + 1
    ctrl_cs = sum(r["how"] == "ctrl-c" for r in results)
    closes = len(results) - ctrl_cs
    print(
        f"{ctrl_cs} Ctrl-Cs and {closes} terminal close: {len(left)} processes left, {hung} hung, "
        f"{taken} with a port still taken; phases {phases}; slowest stop "
        f"{max(float(r['stop_s']) for r in results):.1f} s; {sessions} session directories"  # type: ignore[arg-type]
    )
    for pid, stat, command in left:
        print(f"  left: {pid} {stat} {command}")
    return 1 if left or hung or taken else 0
