#!/usr/bin/env bash
# A custom executor driver (official protocol) that runs each job in a Docker container it
# creates in prepare_exec, like the LXD and libvirt drivers do with their machines.
# Usage: docker.sh config|prepare|run|cleanup IMAGE [SCRIPT STAGE]
set -eu
step=$1 image=$2
name="runnel-custom-ssh-test-${CUSTOM_ENV_CI_RUNNER_SHORT_TOKEN}-${CUSTOM_ENV_CI_JOB_ID}"
case "$step" in
config)
  cat <<JSON
{"driver":{"name":"test-docker","version":"v1"},"hostname":"$name",
 "builds_dir":"/builds","cache_dir":"/cache","builds_dir_is_shared":false,"shell":"sh"}
JSON
  ;;
prepare)
  docker run -d --name "$name" --label runnel-test=custom-ssh "$image" sleep 3600 >/dev/null ||
    exit "$SYSTEM_FAILURE_EXIT_CODE"
  echo "container $name started"
  ;;
run)
  if ! docker exec -i "$name" sh <"$3"; then
    exit "$BUILD_FAILURE_EXIT_CODE"
  fi
  ;;
cleanup)
  docker rm -f "$name" >/dev/null
  ;;
esac
