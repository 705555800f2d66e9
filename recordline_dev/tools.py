"""What the local tools add to `recordline` (app/cli.py): their commands, and what the
service's own commands ask of the dev stack (`recordline sql --dev` and `--serving`,
`recordline replay`'s status line). The command line finds `TOOLS` by its entry point
(`recordline.tools`, pyproject.toml) and imports nothing of this package by name: the
tools import the service, never the reverse, and where they are not installed (the
service's image) the entry point does not load and the service's commands run alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

from app.commands.replay import StatusLine
from recordline_dev import Command, commands
from recordline_dev.sessions import DEV_SESSIONS, sessions


class Tools:
    """The local tools, as `recordline` asks for them."""

    def commands(self) -> dict[str, Command]:
        return commands()

    def dev_file(self, typed_as: str) -> Path | str:
        """The newest dev session's DuckDB file, named on stderr; or why there is none (a
        newer session runs, on the serving tier or another store: its rows are not there)."""
        found = sessions(Path(DEV_SESSIONS))
        readable = [s for s in found if s.duckdb_file() is not None]
        if not readable:
            return (
                f"no `recordline dev` session with a DuckDB store in {Path(DEV_SESSIONS)}/ "
                "here: run it from the directory `recordline dev` ran in, or name the file "
                "(--store duckdb:PATH; `recordline dev` prints its store)"
            )
        chosen = readable[-1]
        path = chosen.duckdb_file()
        assert path is not None
        newer = [s for s in found if s.name > chosen.name and s.running]
        if newer:
            runs = newer[-1]
            where = (
                "on the serving tier (`--serving`: Spanner and the BigQuery stand-in), which "
                f"`{typed_as} sql --serving` queries"
                if runs.serving
                else f"on {runs.stack.store if runs.stack else 'a store of its own'}"
            )
            return (
                f"the newest session, {runs.name}, runs {where}; the newest DuckDB file is the "
                f"older {chosen.described()}'s, which holds none of its records: read it anyway "
                f"with --store duckdb:{path}"
            )
        print(f"recordline sql: session {chosen.described()}: {path}", file=sys.stderr)
        return path

    def sql_serving(self, query: str, typed_as: str) -> int:
        """`recordline sql --serving`: one statement against the running `dev --serving`
        stack's BigQuery stand-in, shown as DuckDB shows a result. ImportError where the
        dev dependency group is not installed."""
        import duckdb

        from recordline_dev.serving import StandInError, query_stand_in
        from recordline_dev.sessions import serving_stack

        session = serving_stack(Path(DEV_SESSIONS))
        if session is None or session.stack is None:
            print(
                f"recordline sql: no `recordline dev --serving` runs from here ({DEV_SESSIONS}/): "
                f"its rows live in the stand-in's memory while it runs. Start it (`{typed_as} "
                "dev --serving`), or query a DuckDB store with --dev or --store",
                file=sys.stderr,
            )
            return 2
        print(
            f"recordline sql: session {session.described()}: {session.stack.store}",
            file=sys.stderr,
        )
        try:
            answer = query_stand_in(session.stack, query)
        except StandInError as exc:
            print(f"recordline sql: {exc}", file=sys.stderr)
            return 1
        duckdb.from_arrow(answer).show(max_rows=1000)
        return 0

    def replay_status_line(self) -> StatusLine:
        """`recordline replay`'s status line on a terminal; ImportError where the dev
        dependency group (rich) is not installed."""
        from recordline_dev.replay import status_line

        return status_line


TOOLS = Tools()
