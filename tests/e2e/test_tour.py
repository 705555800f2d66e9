"""The README's five-minute tour as a newcomer runs it: a fresh clone, each command as
written, in order.

The commands are read from the README's `sh` blocks between "Two commands" and
"Endpoints", so a tour that stops working, or a command the README changes, fails
here. What the tour leaves to the reader is done as a reader would: the servers run
in a terminal of their own and stop with Ctrl-C, `curl -N` and `tail` are watched
until they show what the README says, and `python3 dev.py test` is the command
running this test. Two things differ from a newcomer's machine, both stated: each
server gets free ports (a port in a command is replaced, `serve` gets `PORT`), and
`python3` is the machine's own interpreter (this suite's virtual environment is taken
off `PATH`), so the clone installs its own `.venv`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from recordline_dev.devstack import find_emulator
from recordline_dev.processes import EmulatorNotFound, free_port
from tests.processes import (
    BANNER,
    ROOT,
    START_SECONDS,
    STOP_SECONDS,
    Terminal,
    wait_ready,
    wait_until_gone,
)
from tests.spanner.emulator import find_emulator as find_spanner_emulator
from tests.test_docs_examples import shell_commands
from tests.waiting import until_blocking

pytestmark = pytest.mark.emulator

README = ROOT / "README.md"
# What a command may take: a publish through the emulator, a curl, a `config`.
COMMAND_SECONDS = 120


def tour() -> list[str]:
    text = README.read_text()
    return list(shell_commands(text[text.index("## Two commands") : text.index("## Endpoints")]))


@pytest.fixture
def emulators() -> None:
    for find in (find_emulator, find_spanner_emulator):
        try:
            find()
        except (EmulatorNotFound, FileNotFoundError) as exc:
            pytest.skip(str(exc))  # names the emulator: CI turns it into a failure


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    if not (ROOT / ".git").exists():
        pytest.skip("the tour starts from a clone, and this is no git checkout")
    target = tmp_path / "recordline"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(target)], check=True, timeout=120)
    return target


def newcomer_environment() -> dict[str, str]:
    """This machine's environment without this suite's virtual environment on it."""
    env = dict(os.environ)
    venv = env.pop("VIRTUAL_ENV", "") or str(Path(sys.prefix))
    path = [p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(venv)]
    env["PATH"] = os.pathsep.join(path)
    assert shutil.which("python3", path=env["PATH"]), "no python3 on PATH"
    return env


class Tour:
    """Runs the tour's commands in the clone, on ports of its own."""

    def __init__(self, clone: Path) -> None:
        self.clone = clone
        self.env = newcomer_environment()
        self.port, self.emulator_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: Terminal | None = None
        self.terminals: list[Terminal] = []
        self.pushed = 0

    def as_here(self, command: str) -> str:
        return command.replace(":8080", f":{self.port}").replace(":8085", f":{self.emulator_port}")

    def shell(self, command: str, *, timeout: float = COMMAND_SECONDS, said: bool = False) -> str:
        """What the command printed on its standard output (with `said`, on both)."""
        done = subprocess.run(
            ["bash", "-c", self.as_here(command)],
            cwd=self.clone,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-2000:])
        return done.stdout + done.stderr if said else done.stdout

    def curl(self, command: str) -> tuple[int, str]:
        """The command's body and HTTP status (`-w` adds it after the body)."""
        out = self.shell(f"{command} -sS -w '\\n%{{http_code}}'", timeout=60)
        body, _, status = out.rpartition("\n")
        return int(status), body

    def run(self, command: str) -> None:
        words = command.split()
        if command == "python3 dev.py test":
            return  # the command running this test
        if command == "python3 dev.py serve":
            self.serve()
        elif words[:3] == ["python3", "dev.py", "dev"]:
            self.dev(command)
        elif words[:3] == ["python3", "dev.py", "tail"]:
            self.tail(command)
        elif words[:3] == ["python3", "dev.py", "sql"]:
            self.sql(command)
        elif command.startswith("curl -N"):
            status, body = self.curl(command)
            # The stream ends after RECORDLINE_STREAM_SECONDS, its last event the token.
            assert status == 200, body
            assert "event: page" in body, body
            assert "event: end" in body, body
            assert '"message_id":"m-1"' in body, body
        elif command.startswith("curl "):
            self.read(command)
        else:  # config, schema, --help, publish
            said = self.shell(command, said=True)
            assert said.strip(), f"{command} printed nothing"

    def serve(self) -> None:
        env = {**self.env, "PORT": str(self.port), "RECORDLINE_STREAM_SECONDS": "1"}
        self.server = self.terminal(["python3", "dev.py", "serve"], env)
        wait_ready(self.url, self.server)

    def terminal(self, argv: list[str], env: dict[str, str]) -> Terminal:
        markers = (str(self.clone),)
        terminal = Terminal(argv, env=env, cwd=self.clone, markers=markers)
        self.terminals.append(terminal)
        return terminal

    def stop_server(self) -> None:
        """Ctrl-C, as the README says before `dev`: it stops, and frees the port."""
        assert self.server is not None
        self.server.ctrl_c()
        status = self.server.wait(STOP_SECONDS)
        assert status in (0, 130, -signal.SIGINT), self.server.output[-3000:]
        left = wait_until_gone(self.server.session, self.server.markers, timeout=5)
        assert left == [], left
        self.server = None

    def dev(self, command: str) -> None:
        if self.server is not None:
            self.stop_server()
        ports = f" --port {self.port} --emulator-port {self.emulator_port}"
        if "--serving" in command:
            ports += f" --spanner-port {free_port()}"
        self.server = self.terminal(shlex.split(command + ports), self.env)
        assert self.server.wait_for(BANNER, timeout=START_SECONDS), self.server.output[-3000:]
        banner = self.server.output
        assert "Publish, from another terminal:" in banner, banner[-3000:]
        # The README's publish is the banner's, as the banner prints it here.
        publish = next(c for c in tour() if " dev.py publish " in c)
        assert self.as_here(publish.split(" --count")[0]) in banner, banner[-3000:]

    def read(self, command: str) -> None:
        path = re.search(r"(?:localhost|127\.0\.0\.1):8080(/[^' ]*)", command)
        assert path is not None, command
        target = path[1]
        if target == "/pubsub/push":
            status, _ = self.curl(command)
            assert status == 204
        elif target.startswith("/v1/records?limit=10"):
            # After a publish through the emulator: its ten records arrive by push.
            def ten() -> bool:
                status, body = self.curl(command)
                return status == 200 and len(json.loads(body)["records"]) == 10

            until_blocking(ten, timeout=60, interval=0.5, what=f"ten records from {command}")
        else:
            status, body = self.curl(command)
            assert status == 200, (command, body)
            answer = json.loads(body)
            if target == "/v1/records":
                assert [r["message_id"] for r in answer["records"]] == ["m-1"]
            elif target == "/v1/records/1":
                assert answer["id"] == "1"
            elif target == "/v1/messages/m-1":
                assert answer["status"] == "stored"

    def sql(self, command: str) -> None:
        """The typed columns of the records just published in the example schema, on the
        session's DuckDB file while the stack holds it: ten rows, `n` 1 to 10."""

        def typed() -> bool:
            table = self.shell(command, timeout=60)
            numbers = re.findall(r"^│ \S+ +│ +(\d+) │$", table, re.M)
            return numbers == [str(n) for n in range(1, 11)]

        until_blocking(typed, timeout=60, interval=1, what=f"ten typed rows from {command}")

    def docs(self) -> None:
        """`python3 dev.py docs`, then the site opened from the file system as the README
        says: every link between its pages names a file there (not a directory, which a
        browser lists), the API reference lists its sections, and search has its index."""
        self.shell("python3 dev.py docs", timeout=300)
        site = self.clone / "site"
        # 404.html is a server's page for paths it has not (its links are absolute).
        pages = sorted(set(site.rglob("*.html")) - {site / "404.html"})
        assert site / "index.html" in pages
        for page in pages:
            html = page.read_text()
            for link in re.findall(r'href="([^"#:?]+)(?:#[^"]*)?"', html):
                target = (page.parent / link).resolve()
                assert target.is_file(), (page.relative_to(site), link)
        api = (site / "api.html").read_text()
        toc = api[api.index("md-nav--secondary") : api.index('class="md-content"')]
        assert 'href="#get-v1records"' in toc
        assert "Recordline <span" not in api  # the document's own title, as a second h1
        assert (site / "search" / "search_index.js").read_text().startswith("var __index =")

    def tail(self, command: str) -> None:
        """Each new record as a JSON line: pushed until one shows, then Ctrl-C."""
        with subprocess.Popen(
            ["bash", "-c", self.as_here(command)],
            cwd=self.clone,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        ) as process:
            assert process.stdout is not None
            os.set_blocking(process.stdout.fileno(), False)
            lines: list[bytes] = []

            def shown() -> bool:
                # `tail` starts at its own now: push until a record lands after it.
                self.push(f"m-tail-{self.pushed}")
                lines.extend(process.stdout.readlines() if process.stdout else [])
                return any(b'"m-tail-' in line for line in lines)

            try:
                until_blocking(shown, timeout=60, interval=0.5, what="tail to print a record")
            finally:
                os.killpg(process.pid, signal.SIGINT)
                process.wait(timeout=STOP_SECONDS)
        record = json.loads(next(line for line in lines if b'"m-tail-' in line))
        assert record["message_id"].startswith("m-tail-")

    def push(self, message_id: str) -> None:
        self.pushed += 1
        data = base64.b64encode(json.dumps({"id": message_id}).encode()).decode()
        body = json.dumps(
            {
                "message": {
                    "data": data,
                    "messageId": message_id,
                    "publishTime": "2024-04-27T12:00:01Z",
                }
            }
        )
        status, _ = self.curl(
            f"curl -X POST localhost:8080/pubsub/push -H 'content-type: application/json' "
            f"-d '{body}'"
        )
        assert status == 204

    @contextlib.contextmanager
    def cleaned_up(self) -> Iterator[Tour]:
        try:
            yield self
        finally:
            for terminal in self.terminals:
                terminal.kill_everything()


@pytest.mark.usefixtures("emulators")
def test_the_readme_tour_runs_as_written_on_a_fresh_clone(clone: Path) -> None:
    commands = tour()
    assert commands[:2] == ["python3 dev.py serve", "python3 dev.py test"]
    with Tour(clone).cleaned_up() as walk:
        for command in commands:
            walk.run(command)
        # The prose's `python3 dev.py dev --serving`, "the same commands after it".
        readme = README.read_text()
        assert "`python3 dev.py dev --serving` runs the serving tier" in readme
        walk.run("python3 dev.py dev --serving")
        for command in commands[commands.index("python3 dev.py dev") + 1 :]:
            walk.run(command)
        walk.stop_server()
        # The documentation, as the README's "Documentation" says to build and open it.
        assert "`python3 dev.py docs`, then open\n`site/index.html`" in readme
        walk.docs()
