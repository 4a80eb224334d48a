#!/usr/bin/env bash
# A custom executor driver (official protocol) that runs the job's stages on this host.
# Usage: host.sh config|prepare|run|cleanup ROOT [SCRIPT STAGE]; ROOT holds builds, cache, log.
set -eu
step=$1 root=$2
log="$root/driver.log"
case "$step" in
config)
  echo "config_exec stderr reaches the job log" >&2
  cat <<JSON
{"driver":{"name":"test-host","version":"v1.2.3"},"hostname":"driver-host",
 "builds_dir":"$root/builds","cache_dir":"$root/cache","builds_dir_is_shared":false,
 "job_env":{"FROM_JOB_ENV":"job-env-value"}}
JSON
  ;;
prepare)
  echo "prepare job=${CUSTOM_ENV_CI_JOB_ID} tmpdir=$([ "$TMPDIR" = "$PWD" ] && echo cwd)" \
    "codes=$BUILD_FAILURE_EXIT_CODE/$SYSTEM_FAILURE_EXIT_CODE job_env=$FROM_JOB_ENV" \
    "response=$(grep -q "\"id\": *${CUSTOM_ENV_CI_JOB_ID}" "$JOB_RESPONSE_FILE" && echo ok)"
  echo "prepare ${CUSTOM_ENV_CI_JOB_ID}" >>"$log"
  ;;
run)
  script=$3 stage=$4
  echo "run ${CUSTOM_ENV_CI_JOB_ID} $stage $(stat -c %a "$script")" >>"$log"
  bash "$script" || {
    echo "$?" >"$BUILD_EXIT_CODE_FILE"
    exit "$BUILD_FAILURE_EXIT_CODE"
  }
  ;;
cleanup)
  echo "cleanup ${CUSTOM_ENV_CI_JOB_ID}" >>"$log"
  ;;
esac
