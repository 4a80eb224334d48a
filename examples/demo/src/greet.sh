#!/usr/bin/env bash
# Prints a greeting in the language given as $1 (en, fr or de).
set -euo pipefail
case "${1:-en}" in
  en) echo "Hello from greet @VERSION@" ;;
  fr) echo "Bonjour de greet @VERSION@" ;;
  de) echo "Hallo von greet @VERSION@" ;;
  *) echo "greet: unknown language '$1'" >&2; exit 1 ;;
esac
