# syntax=docker/dockerfile:1

# Base images are pinned by digest so a rebuild of the same commit uses the same bytes;
# bump the tag and the digest together. Python 3.11 is the version CI tests and types
# against (pyproject.toml: requires-python, ruff and mypy targets).

# --- build: resolve exactly what uv.lock says into /opt/venv ------------------------
FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d AS builder

# The uv dev.py and CI use (UV_VERSION in dev.py; a test keeps the three equal), from
# PyPI with the hashes of its x86_64 and aarch64 wheels, so the image resolves uv.lock
# with the same resolver the tests ran under.
RUN printf '%s\n' 'uv==0.13.9 \
      --hash=sha256:d7f459fe4fd247d830351c75686d3996ace3c6f3f728eb0e85a30b7ada0cef19 \
      --hash=sha256:5435c5ce14a56431208ca0996416d310f1598e8c2c8ba707688985a16bb82dbe' \
      > /tmp/uv-requirements.txt \
    && python -m pip install --no-cache-dir --require-hashes -r /tmp/uv-requirements.txt

# Bytecode is compiled once here rather than on every cold start; the venv is copied
# to the runtime stage, so uv must copy files instead of hard-linking from its cache.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv

WORKDIR /src

# Dependencies first: this layer is reused until uv.lock changes.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project

# Then the project itself, installed as a wheel so the runtime needs no source tree.
COPY README.md ./
COPY app ./app
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable

# --- runtime: the interpreter, the venv, nothing else --------------------------------
FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d AS runtime

# The service's working directory, the one place it may write: the default DuckDB
# store and its journal live there (mount a volume on it to keep them).
RUN groupadd --system --gid 10001 recordline \
    && useradd --system --uid 10001 --gid recordline --no-create-home --shell /usr/sbin/nologin recordline \
    && install --directory --owner 10001 --group 10001 --mode 0750 /var/lib/recordline

COPY --from=builder /opt/venv /opt/venv

# No RECORDLINE_STORE: the default store (duckdb:recordline.duckdb) is relative to the
# working directory below, the one place the service may write. Every process of a
# cell runs this image (its service, exporter pool and jobs), and a cell refuses a
# deployment of one's variables beside RECORDLINE_CELL: its systems' stores are their
# entries in RECORDLINE_SYSTEMS (Terraform's systems' file).
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PORT=8080

WORKDIR /var/lib/recordline
USER 10001:10001
EXPOSE 8080

# Cloud Run ignores HEALTHCHECK and probes /readyz and /healthz itself (see
# infra/terraform/cell.tf); this one serves `docker run` and compose.
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8080') + '/healthz', timeout=2)"]

# Exec form: the server is PID 1 and receives Cloud Run's SIGTERM directly, drains
# in-flight pushes and exits within the 10 s Cloud Run allows. It reads $PORT.
CMD ["recordline", "serve", "--host", "0.0.0.0"]
