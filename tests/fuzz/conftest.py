from __future__ import annotations

from _pytest.terminal import TerminalReporter

from tests.fuzz.test_pushes import TRIED


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    """How many pushes the fuzzer tried, by store and format (`dev.py fuzz` adds them up)."""
    if not TRIED:
        return
    terminalreporter.section("fuzz: pushes tried")
    for (store, fmt), count in sorted(TRIED.items()):
        terminalreporter.write_line(f"fuzz-tried {store} {fmt} {count}")
