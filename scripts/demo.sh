#!/usr/bin/env bash
# Runnel's main job on a built-in default: start the bundled fake GitLab, register a runner with
# `runnel register`, let `runnel run-single` pick up one job and run it through bash, and print
# the job log exactly as GitLab received it. Needs cargo, bash and curl; no network.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/runnel-target}"
cargo build --quiet -p runnel -p runnel-fake-gitlab
bin="$CARGO_TARGET_DIR/debug"

work="$(mktemp -d)"
fake_pid=""
cleanup() {
  [ -n "$fake_pid" ] && kill "$fake_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

token="glrt-demo-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
"$bin/runnel-fake-gitlab" --listen 127.0.0.1:0 --runner-token "$token" --long-poll-secs 2 \
  >"$work/fake.out" 2>"$work/fake.err" &
fake_pid=$!
for _ in $(seq 1 100); do
  [ -s "$work/fake.out" ] && break
  sleep 0.1
done
url="$(head -n1 "$work/fake.out")"
echo "== fake GitLab listening on $url"

job='{"name":"demo","git_strategy":"none",
      "variables":[{"key":"GREETING","value":"hello from Runnel"},
                   {"key":"API_KEY","value":"very-secret-value-123","masked":true}],
      "script":["echo \"$GREETING\"","echo \"the key is $API_KEY\"","uname -sm"],
      "after_script":["echo \"job status: $CI_JOB_STATUS\""]}'
id="$(curl -fsS -X POST -H 'content-type: application/json' -d "$job" "$url/__fake/jobs" | sed 's/[^0-9]//g')"
echo "== enqueued job $id"

config="$work/config.toml"
"$bin/runnel" register --non-interactive --url "$url" --token "$token" --executor shell \
  --name demo --builds-dir "$work/builds" -c "$config"
"$bin/runnel" run-single --runner demo --max-builds 1 -c "$config"

echo
echo "== job log as GitLab received it:"
curl -fsS "$url/__fake/jobs/$id" | python3 -c 'import json,sys; d=json.load(sys.stdin); sys.stdout.write(d["trace"]); print("== final status:", d["status"])'
