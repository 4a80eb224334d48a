#!/usr/bin/env bash
# Reproduces every figure in docs/performance.md: builds release binaries (fat LTO,
# as shipped) of runnel,
# runnel-bench and the Rust peer (runnel-bench-peer), installs the Python peer
# (gitlab-python-runner from PyPI) into a venv under ~/.cache/runnel-bench if it is not there,
# and runs every scenario, the peers alternated with Runnel, writing the table to stdout, the
# JSON to docs/perf.json and the plots to docs/img/. Extra arguments go to runnel-bench
# (e.g. `-n 3`, `--only peers`, `--no-peers`).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
venv="$HOME/.cache/runnel-bench/pyrunner"

if [ ! -x "$venv/bin/gitlab-runner.py" ]; then
  # gitlab-python-runner 14.3.20 (its last release) imports helpers that gitlab-emulator
  # removed after 1.3.x, so the emulator is pinned.
  if python3 -m venv "$venv" &&
    "$venv/bin/pip" install --quiet "gitlab-python-runner==14.3.20" "gitlab-emulator==1.3.6"; then
    echo "bench.sh: installed gitlab-python-runner into $venv" >&2
  else
    echo "bench.sh: could not install gitlab-python-runner; the Python peer is skipped" >&2
    rm -rf "$venv"
  fi
fi

# runnel on its own, as the README builds it: built in one invocation with the bench crates, its
# dependencies would get their features too, which changes the symbol names that
# crates/runnel/symbol-order.txt lists (scripts/symbol-order.sh).
cargo build --release --locked -p runnel
cargo build --release --locked -p runnel-bench -p runnel-bench-peer
mkdir -p docs/img
exec "$target/release/runnel-bench" --peers --json docs/perf.json --plots docs/img "$@"
