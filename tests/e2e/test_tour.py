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

Beside the commands, what a newcomer meets next is checked on the way: what each
command says (publish's summary on a pipe and its progress and Ctrl-C on a terminal,
tail's and dev's when stopped, replay's at once), `sql --dev` and `sql --serving`
refusing the other's stack, plain JSON refused by a topic with a schema, naming it,
`dev --store` refusing the file of the session it stopped, and the site's home page
being the README.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
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
    signals_as_a_shell_gives_them,
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
    # A newcomer's machine is no CI's (where the docs' build requires Mermaid installed).
    env.pop("CI", None)
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
        # The dev stack running, its banner, and whether it is --serving.
        self.banner = ""
        self.serving = False

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

    def refused(self, command: str, *, status: int) -> str:
        """What the command said on stderr, where it is expected to refuse with `status`."""
        done = subprocess.run(
            ["bash", "-c", self.as_here(command)],
            cwd=self.clone,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=COMMAND_SECONDS,
        )
        assert done.returncode == status, (command, done.stdout[-2000:], done.stderr[-2000:])
        assert "Traceback" not in done.stderr, done.stderr
        return " ".join(done.stderr.split())

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
        elif " dev.py publish " in command:
            self.publish(command)
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
        """Ctrl-C, as the README says before `dev`: it stops, and frees the port; a dev
        stack says what its session stored, and where."""
        assert self.server is not None
        before = len(self.server.output)
        self.server.ctrl_c()
        status = self.server.wait(STOP_SECONDS)
        assert status in (0, 130, -signal.SIGINT), self.server.output[-3000:]
        left = wait_until_gone(self.server.session, self.server.markers, timeout=5)
        assert left == [], left
        if self.banner:
            said = " ".join(self.server.output[before:].split())
            assert "the session's pushes:" in said, said[-3000:]
            assert re.search(r"pushes: [0-9,]+ stored · [0-9,]+ rejected", said), said[-3000:]
            kept = "go with it" if self.serving else "python3 dev.py sql --dev` reads it"
            assert kept in said, said[-3000:]
        self.server = None
        self.banner = ""

    def dev(self, command: str) -> None:
        if self.server is not None:
            self.stop_server()
        ports = f" --port {self.port} --emulator-port {self.emulator_port}"
        if "--serving" in command:
            ports += f" --spanner-port {free_port()}"
        self.server = self.terminal(shlex.split(command + ports), self.env)
        assert self.server.wait_for(BANNER, timeout=START_SECONDS), self.server.output[-3000:]
        banner = self.server.output
        self.banner, self.serving = banner, "--serving" in command
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
            elif target == "/v1/records?since=1h":
                # How long ago, as `tail --since 1h` takes it (a 400 before).
                assert "m-1" in [r["message_id"] for r in answer["records"]]
            elif target == "/v1/records?order=newest":
                assert [r["message_id"] for r in answer["records"]][:1] == ["m-1"]
            elif target == "/v1/records/1":
                assert answer["id"] == "1"
            elif target == "/v1/messages/m-1":
                assert answer["status"] == "stored"

    def sql(self, command: str) -> None:
        """The typed columns of the records just published in the example schema: ten
        rows, `n` 0 to 9, on the session's DuckDB file while the stack holds it
        (`--dev`), or in the running `--serving` stack's BigQuery stand-in
        (`--serving`). Each refuses the other's stack, saying which to use."""
        if "--dev" in command and self.serving:
            # It read the DuckDB file of an earlier session, where none of these are.
            said = self.refused(command, status=2)
            assert "runs on the serving tier" in said, said
            assert "`python3 dev.py sql --serving` queries" in said, said
            return
        if "--serving" in command and not self.serving:
            said = self.refused(command, status=2)
            assert "no `recordline dev --serving` runs from here" in said, said
            return

        def typed() -> bool:
            done = subprocess.run(
                ["bash", "-c", self.as_here(command)],
                cwd=self.clone,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            # On the serving tier the typed column is the export's to add, with the
            # first typed rows it exports: until then the table has none.
            if done.returncode != 0 and 'column "fields" not found' in done.stderr:
                return False
            assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-2000:])
            table = done.stdout
            numbers = re.findall(r"^│ \S+ +│ +(\d+) │$", table, re.M)
            return numbers == [str(n) for n in range(10)]

        until_blocking(typed, timeout=60, interval=1, what=f"ten typed rows from {command}")
        said = self.shell(command, said=True)
        assert "recordline sql: session session-" in said, said  # which session's store

    def publish(self, command: str) -> None:
        """Through a pipe, as the tour runs it: no progress drawn, one summary line with
        what Pub/Sub acknowledged and what the service stored. Published in the example
        schema, the topic then takes that encoding only, and plain JSON is refused
        naming the schema (it was "InvalidArgument: Could not parse message")."""
        said = self.shell(command, said=True)
        assert "━" not in said, said  # no bar on a pipe
        assert "published 10 of 10 messages to projects/recordline-dev/topics/records" in said
        assert "the service stored 10, rejected 0" in said, said
        if "--schema" not in command:
            return
        plain = next(c for c in tour() if " dev.py publish " in c and "--schema" not in c)
        refused = self.refused(plain, status=1)
        assert "takes messages in the schema projects/recordline-dev/schemas/record" in refused
        assert "--schema FILE" in refused, refused

    def publish_interrupted(self) -> None:
        """A long publish on a terminal shows its progress, and Ctrl-C says what was sent
        and stored and the --epoch-ended that goes on from there (it said "interrupted",
        with 43 stored)."""
        # In the topic's schema, which it now takes only.
        typed = next(c for c in tour() if " dev.py publish " in c and "--schema" in c)
        env, argv = self.split(typed.replace("--count 10", "--count 100000 --rate 20"))
        terminal = self.terminal(argv, env)
        assert terminal.wait_for(" acked · ", timeout=60), terminal.output[-3000:]
        until_blocking(
            lambda: re.search(r"[1-9][0-9,]* stored · ", terminal.output) is not None,
            timeout=60,
            interval=0.2,
            what=lambda: f"the service's count of stored records\n{terminal.output[-3000:]}",
        )
        terminal.ctrl_c()
        assert terminal.wait(STOP_SECONDS) == 130, terminal.output[-3000:]
        said = " ".join(terminal.output.split())
        assert "recordline publish: interrupted:" in said, said[-3000:]
        assert "acknowledged by Pub/Sub; the service stored" in said, said[-3000:]
        assert "not sent" in said, said[-3000:]
        assert re.search(r"--producer recordline-publish-\S+ --epoch-ended \d+:\d+", said), said

    def replay_dead_letters(self) -> None:
        """The banner's replay command, as a dry run: it says at once what it pulls from
        (it was silent for 11 to 13 s), then what would become of each message."""
        line = next(x for x in self.banner.splitlines() if " replay dead-letters " in x)
        env, argv = self.split(line.strip())
        terminal = self.terminal([*argv, "--dry-run"], env)
        assert terminal.wait(COMMAND_SECONDS) == 0, terminal.output[-3000:]
        said = terminal.output
        assert "replay dead-letters: 0 stored" in said, said[-3000:]
        # Said before the wait for an empty queue, not only the summary after it.
        assert -1 < said.find("pulling from") < said.find("replay dead-letters: 0"), said

    def split(self, command: str) -> tuple[dict[str, str], list[str]]:
        """A command line's settings (`VAR=value …`), over this tour's environment, and
        its words, as a shell would run it here."""
        words = shlex.split(self.as_here(command))
        settings = list(itertools.takewhile(lambda w: "=" in w and not w.startswith("-"), words))
        return {**self.env, **dict(w.split("=", 1) for w in settings)}, words[len(settings) :]

    def earlier_store_refused(self) -> None:
        """`dev --store` on the session's file the stack stopped with: refused, naming the
        fix (it ran, and its messages were taken for later copies of the old ones)."""
        found = re.search(r"store +(duckdb://\S+)", self.banner)
        assert found is not None, self.banner
        self.stop_server()
        command = f"python3 dev.py dev --store {found[1]} --port {self.port}"
        said = self.refused(command + f" --emulator-port {self.emulator_port}", status=2)
        assert re.search(r"holds [0-9,]+ messages an earlier session's Pub/Sub emulator", said)
        assert "Drop --store" in said, said

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
        # The site's home is the README: its tour and what to do when something is wrong
        # (the home page had neither, and called the first page "every record").
        home = (site / "index.html").read_text()
        assert "A five-minute tour" in home
        assert "When something is wrong" in home
        assert "sql --serving" in home
        assert "every record, in ingest order" not in home
        api = (site / "api.html").read_text()
        toc = api[api.index("md-nav--secondary") : api.index('class="md-content"')]
        assert 'href="#get-v1records"' in toc
        assert "Recordline <span" not in api  # the document's own title, as a second h1
        assert (site / "search" / "search_index.js").read_text().startswith("var __index =")

    def tail(self, command: str) -> None:
        """Each new record as a JSON line: pushed until one shows, then Ctrl-C."""
        # What it says goes to a file, not a pipe read only at the end: a full pipe would
        # stop it mid-line, where Ctrl-C could not be seen to stop it. It gets Ctrl-C as a
        # shell gives a command it runs, whether or not the suite runs with it ignored
        # (a background job: a child inherits what is ignored).
        with tempfile.TemporaryFile() as errors:
            # Only while it starts: the suite's own Ctrl-C is its own again after.
            with signals_as_a_shell_gives_them():
                process = subprocess.Popen(
                    ["bash", "-c", self.as_here(command)],
                    cwd=self.clone,
                    env=self.env,
                    stdout=subprocess.PIPE,
                    stderr=errors,
                    start_new_session=True,
                )
            with process:
                assert process.stdout is not None
                os.set_blocking(process.stdout.fileno(), False)
                lines: list[bytes] = []

                def shown() -> bool:
                    # `tail` starts at its own now: push until a record lands after it.
                    self.push(f"m-tail-{self.pushed}")
                    lines.extend(process.stdout.readlines() if process.stdout else [])
                    return any(b'"m-tail-' in line for line in lines)

                def said_so_far() -> str:
                    errors.seek(0)
                    return errors.read().decode(errors="replace")

                try:
                    until_blocking(shown, timeout=60, interval=0.5, what="tail to print a record")
                finally:
                    os.killpg(process.pid, signal.SIGINT)
                    try:
                        process.wait(timeout=STOP_SECONDS)
                    except subprocess.TimeoutExpired:
                        os.killpg(process.pid, signal.SIGKILL)
                        process.wait()
                        pytest.fail(
                            f"{command} did not stop within {STOP_SECONDS} s of Ctrl-C; it "
                            f"said: {said_so_far()[-3000:]!r}"
                        )
                said = said_so_far()
        record = json.loads(next(line for line in lines if b'"m-tail-' in line))
        assert record["message_id"].startswith("m-tail-")
        # Stopped, it says what it printed (it said nothing).
        assert "recordline tail: stopped: " in said, said
        assert " records printed, the last stored at " in said, said

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
        # What a newcomer does next, on the same stack: a long publish, stopped; the
        # banner's replay of dead letters; the stack stopped and started again on the
        # store it stopped with.
        walk.publish_interrupted()
        walk.replay_dead_letters()
        walk.earlier_store_refused()
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
