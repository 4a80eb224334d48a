#!/usr/bin/env bash
# Regenerates crates/runnel/symbol-order.txt: the functions an idle `runnel run` executes once it
# has given its memory back, which release builds place first and together (crates/runnel/build.rs,
# docs/performance.md "Session 7: idle memory"). With --check, builds the same way and reports how
# many of the file's entries name functions of that build and how many 64 KiB blocks they span.
#
# Symbol names carry hashes of the toolchain, Cargo.lock, the profile, the dependencies'
# features and the code, so the file is only right for the build it was made from. The script
# builds the release profile as shipped (`cargo build --release -p runnel`, alone: packages built
# in one invocation share their dependencies' features), with its symbol table kept:
# `-C strip=none` in RUSTFLAGS leaves every name as the shipped build has it (setting the
# profile's `strip` instead would change every crate's hash).
# The build goes to its own target dir, $SYMBOL_ORDER_TARGET_DIR (default target/symbol-order),
# a full fat-LTO build the first time.
#
# How the functions are found: the daemon runs under valgrind's callgrind against
# runnel-fake-gitlab (long polls of 4 s, so polls also end and start again). Callgrind zeroes its
# counts each time the daemon enters `memory::advise_dontneed` (the trim), and the script dumps
# them after each idle window: once after the first trim (after start-up), once after the trim
# that follows a job. The functions of the runnel binary in those dumps, sorted by name, are the
# file. Needs valgrind (callgrind_control), curl, python3 and nm. Usage: scripts/symbol-order.sh
# [--check] [--no-build]
set -euo pipefail
cd "$(dirname "$0")/.."

mode=generate
build=yes
for arg in "$@"; do
  case "$arg" in
    --check) mode=check ;;
    # Uses the binaries already in the target dir (made by an earlier run of this script).
    --no-build) build=no ;;
    *) echo "usage: scripts/symbol-order.sh [--check] [--no-build]" >&2; exit 2 ;;
  esac
done
order=crates/runnel/symbol-order.txt
target="${SYMBOL_ORDER_TARGET_DIR:-${CARGO_TARGET_DIR:-target}/symbol-order}"
window="${SYMBOL_ORDER_WINDOW_SECS:-15}"

if [ "$build" = yes ]; then
  # `-p runnel` alone, as the README builds it: packages built together share their
  # dependencies' features, which changes those crates' hashes.
  CARGO_TARGET_DIR="$target" RUSTFLAGS="${RUSTFLAGS:-} -C strip=none" \
    cargo build --release --locked -p runnel
  [ "$mode" = check ] || CARGO_TARGET_DIR="$target" cargo build --release --locked -p runnel-fake-gitlab
fi
bin="$target/release/runnel"

if [ "$mode" = check ]; then
  nm --defined-only -S "$bin" | awk -v order="$order" -v bin="$bin" '
    function hex(text,   i, n) {
      n = 0
      for (i = 1; i <= length(text); i++) n = n * 16 + index("0123456789abcdef", substr(tolower(text), i, 1)) - 1
      return n
    }
    BEGIN {
      while ((getline line < order) > 0) {
        sub(/^[ \t]+/, "", line); sub(/[ \t]+$/, "", line)
        if (line != "" && line !~ /^#/) { wanted[line] = 1; total++ }
      }
    }
    NF == 4 && ($4 in wanted) && !($4 in seen) {
      seen[$4] = 1; found++
      start = hex($1); end = start + hex($2)
      for (b = int(start / 65536); b <= int((end - 1) / 65536); b++) blocks[b] = 1
      if (found == 1 || start < lo) lo = start
      if (end > hi) hi = end
    }
    END {
      n = 0; for (b in blocks) n++
      printf "%d of %d entries found in %s\n", found, total, bin
      if (found > 0) printf "they span %d KiB in %d blocks of 64 KiB\n", (hi - lo) / 1024, n
      if (total == 0 || found * 10 < total * 9) { print "fewer than 90% found: regenerate the file (scripts/symbol-order.sh)"; exit 1 }
    }'
  exit
fi

command -v callgrind_control >/dev/null || { echo "symbol-order.sh: needs valgrind" >&2; exit 1; }
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

token="glrt-symbolorder$RANDOM$RANDOM"
"$target/release/runnel-fake-gitlab" --runner-token "$token" --long-poll-secs 4 >"$work/url" 2>"$work/fake.log" &
pids+=("$!")
for _ in $(seq 100); do [ -s "$work/url" ] && break; sleep 0.1; done
url="$(head -n1 "$work/url")"
[ -n "$url" ] || { echo "symbol-order.sh: the fake did not start" >&2; cat "$work/fake.log" >&2; exit 1; }

mkdir -p "$work/builds" "$work/cache"
cat >"$work/config.toml" <<TOML
concurrent = 1
check_interval = 3
shutdown_timeout = 30

[[runners]]
  name = "symbol-order"
  url = "$url"
  token = "$token"
  executor = "shell"
  shell = "bash"
  builds_dir = "$work/builds"
  cache_dir = "$work/cache"
TOML
chmod 600 "$work/config.toml"

# The bench's log level (runnel-bench runs runners at `warning`): logging code is not profiled.
HOME="$work" valgrind --tool=callgrind --demangle=no --compress-strings=no --compress-pos=no \
  --zero-before='_ZN6runnel6memory15advise_dontneed*' \
  --callgrind-out-file="$work/callgrind.out" \
  "$bin" --log-level warning run -c "$work/config.toml" 2>"$work/runner.log" &
runner=$!
pids+=("$runner")

# Dumps the counts since the last zeroing (a dump zeroes them too) into $dumped.
dumped=
dump() {
  local before after
  before="$(find "$work" -name 'callgrind.out.*' | wc -l)"
  callgrind_control -d "$1" "$runner" >/dev/null
  for _ in $(seq 300); do
    after="$(find "$work" -name 'callgrind.out.*' | wc -l)"
    [ "$after" -gt "$before" ] && break
    sleep 0.1
  done
  dumped="$work/callgrind.out.$after"
  [ -s "$dumped" ] || { echo "symbol-order.sh: no dump $dumped" >&2; exit 1; }
}
# Waits for the next trim (malloc_trim runs only there), then one more idle window; both
# dumps are the profile.
selected=()
idle_after_trim() {
  for _ in $(seq 20); do
    sleep "$window"
    kill -0 "$runner" 2>/dev/null || { echo "symbol-order.sh: the runner exited" >&2; cat "$work/runner.log" >&2; exit 1; }
    dump "$1"
    if grep -q '^fn=malloc_trim' "$dumped"; then
      selected+=("$dumped")
      sleep "$window"
      dump "$1-more"
      selected+=("$dumped")
      return
    fi
  done
  echo "symbol-order.sh: no trim seen" >&2
  exit 1
}

idle_after_trim start
field() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
id="$(curl -fsS -X POST "$url/__fake/jobs" \
  -d '{"name":"symbol-order","script":["echo idle"],"git_strategy":"none"}' | field id)"
status=
for _ in $(seq 600); do
  status="$(curl -fsS "$url/__fake/jobs/$id" | field status)"
  case "$status" in success | failed | canceled) break ;; esac
  sleep 0.5
done
[ "$status" = success ] || { echo "symbol-order.sh: job $id ended as '$status'" >&2; exit 1; }
idle_after_trim after-job
kill -QUIT "$runner" 2>/dev/null || true

{
  echo "# The functions an idle \`runnel run\` executes after it gives memory back: laid out first"
  echo "# and together in release builds (build.rs). Generated by scripts/symbol-order.sh; names"
  echo "# of another toolchain, Cargo.lock or code are ignored by the linker, so regenerate after"
  echo "# changing those (--check counts the entries the current build has)."
  awk '
    /^ob=/ { ob = substr($0, 4); next }
    /^fn=/ && ob ~ /\/runnel$/ {
      name = substr($0, 4); sub(/'"'"'[0-9]+$/, "", name)
      # Not pseudo-functions such as "(below main)" or unnamed code ("0x…").
      if (name ~ /^[A-Za-z_][A-Za-z0-9_.$]*$/) print name
    }' "${selected[@]}" | LC_ALL=C sort -u
} >"$order.new"
mv "$order.new" "$order"
echo "symbol-order.sh: $(grep -vc '^#' "$order") functions in $order (from ${#selected[@]} dumps)"
