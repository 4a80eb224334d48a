#!/usr/bin/env bash
# A custom executor driver (official protocol) that fails the way the job variable FAIL asks:
# system (exit SYSTEM_FAILURE_EXIT_CODE in build_script), unknown (exit 7), prepare-system,
# prepare-timeout (sleeps past prepare_exec_timeout), bad-json (config_exec), hang (build_script
# ignores SIGTERM until SIGKILL).
# Usage: failing.sh config|prepare|run|cleanup ROOT [SCRIPT STAGE]
set -u
step=$1 root=$2
mode=${CUSTOM_ENV_FAIL:-}
log="$root/driver.log"
case "$step" in
config)
  if [ "$mode" = bad-json ]; then echo "this is not json"; exit 0; fi
  # Concurrent jobs share this host directory: nest them by token and slot, as the official runner does.
  echo "{\"builds_dir\":\"$root/builds\",\"cache_dir\":\"$root/cache\",\"builds_dir_is_shared\":true}"
  ;;
prepare)
  case "$mode" in
  prepare-system) echo "no machine available" >&2; exit "$SYSTEM_FAILURE_EXIT_CODE" ;;
  prepare-timeout) echo "preparing slowly"; sleep 60 ;;
  esac
  ;;
run)
  if [ "$4" = build_script ]; then
    case "$mode" in
    system) echo "the machine went away" >&2; exit "$SYSTEM_FAILURE_EXIT_CODE" ;;
    unknown) exit 7 ;;
    hang)
      trap '' TERM
      echo "$$" >"$root/hang.pid"
      echo "driver hangs"
      while :; do sleep 1; done
      ;;
    esac
  fi
  bash "$3" || exit "$BUILD_FAILURE_EXIT_CODE"
  ;;
cleanup)
  echo "cleanup ${CUSTOM_ENV_CI_JOB_ID}" >>"$log"
  ;;
esac
