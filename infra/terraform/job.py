"""What a cell's jobs run (ops.tf, exporter.tf): the image's `recordline`, with the
settings the job's command names and no others.

On-call runs a job with arguments of their own (run.jobs.runWithOverrides), and that
right also changes its environment: a variable the interpreter or a library reads
(PYTHONWARNINGS importing a module of the caller's choosing, an emulator's host, a
proxy) would run other code, or reach other places, as the job's account: the export
job's is the exporter's. A job's command is the one thing an execution cannot
override, so it holds the settings: `/opt/venv/bin/python3 -I -u -c <this file>
NAME=value ... --`, then the execution's arguments. Started with -I, the interpreter
reads no PYTHON* variable (-u: what it prints reaches the log at once); this replaces
the environment with the command's settings and the variables Cloud Run sets for the
task (reserved: no override sets them), and runs `recordline` with the arguments
after `--`. What the environment held besides is left out; the job's log names it,
but for the names the image and the platform set (an override of one of those is left
out unnamed). What the dynamic loader reads (LD_PRELOAD) acts before any of this: so
a job mounts no file on-call writes (exporter.tf).

Run by the image's Python with the standard library only, before the command line
is imported: what that imports reads the environment this leaves.
"""

import os
import runpy
import sys

# Set by Cloud Run for each task (its container contract): reserved, never overridden.
PLATFORM = (
    "CLOUD_RUN_JOB",
    "CLOUD_RUN_EXECUTION",
    "CLOUD_RUN_TASK_INDEX",
    "CLOUD_RUN_TASK_ATTEMPT",
    "CLOUD_RUN_TASK_COUNT",
)

words = sys.argv[1:]
if "--" not in words:
    sys.exit("the job's command names its settings, NAME=value, up to `--`: it has no `--`")
end = words.index("--")
settings = dict(word.partition("=")[::2] for word in words[:end])
environment = {**settings, **{name: os.environ[name] for name in PLATFORM if name in os.environ}}
# What an override added or changed; what the image (Dockerfile, its base), the
# platform and Python's locale coercion set besides is left out unsaid.
UNSAID = {
    "GPG_KEY",
    "HOME",
    "HOSTNAME",
    "LANG",
    "LC_CTYPE",
    "PATH",
    "PORT",
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONUNBUFFERED",
    "PYTHON_SHA256",
    "PYTHON_VERSION",
}
left = sorted(
    name
    for name, value in os.environ.items()
    if environment.get(name) != value and not (name in UNSAID and name not in settings)
)
if left:
    print(
        "the job runs with the settings its command names; left out of its environment: "
        + ", ".join(left),
        file=sys.stderr,
    )
os.environ.clear()
os.environ.update(environment)
sys.argv = ["recordline", *words[end + 1 :]]
runpy.run_module("app.cli", run_name="__main__", alter_sys=True)
