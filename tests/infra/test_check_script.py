"""infra/check.sh runs on a fresh clone, as the README says: no uv on PATH beforehand."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


def test_check_sh_uses_the_uv_dev_py_installs_when_none_is_on_path(tmp_path: Path) -> None:
    # A clone holding what check.sh and dev.py need, and the uv dev.py would have put
    # into .tools/ (a stub that records how it was called, then stops the script).
    (tmp_path / "infra").mkdir()
    shutil.copy(ROOT / "infra" / "check.sh", tmp_path / "infra" / "check.sh")
    shutil.copy(ROOT / "dev.py", tmp_path / "dev.py")
    calls = tmp_path / "uv-calls"
    _executable(tmp_path / ".tools" / "bin" / "uv", f'#!/bin/sh\necho "$@" >> {calls}\nexit 3\n')
    _executable(tmp_path / "bin" / "terraform", "#!/bin/sh\nexit 0\n")
    python = Path(shutil.which("python3", path="/usr/bin:/bin") or "/usr/bin/python3")
    path = os.pathsep.join([str(tmp_path / "bin"), str(python.parent), "/usr/bin", "/bin"])
    assert shutil.which("uv", path=path) is None  # the fresh machine this is about
    run = subprocess.run(
        ["bash", "infra/check.sh"],
        cwd=tmp_path,
        env={"PATH": path, "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = run.stdout + run.stderr
    assert "command not found" not in output, output
    # terraform fmt passed; the provider-schema step ran through dev.py's uv.
    assert calls.read_text().startswith("run --no-project"), output
    assert run.returncode == 3, output
