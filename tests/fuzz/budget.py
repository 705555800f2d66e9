"""How long the fuzzers run: examples per test, from RECORDLINE_FUZZ_EXAMPLES.

The test run keeps the default (a few seconds per test); `python3 dev.py fuzz`
raises it and runs round after round.
"""

from __future__ import annotations

import os

EXAMPLES = int(os.environ.get("RECORDLINE_FUZZ_EXAMPLES", "25"))
