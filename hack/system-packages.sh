#!/usr/bin/env bash
# Installs the Debian packages the test suite starts as real servers and that Go modules do not provide:
# PostgreSQL (the ContinuousBenchmark's PostgreSQL store is tested against a throwaway initdb cluster).
# Idempotent: does nothing when the binaries are already there. Needs root (CI runs as root) or prints the
# command to run.
set -euo pipefail

log() { echo "system-packages: $*" >&2; }
die() { echo "system-packages: error: $*" >&2; exit 1; }

missing=()
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
((${#missing[@]} == 0)) && exit 0

command -v apt-get >/dev/null 2>&1 ||
    die "missing ${missing[*]} and apt-get is not available; install ${missing[*]} or set HDC_TEST_POSTGRES_URL"
((EUID == 0)) || die "missing ${missing[*]}; run: sudo apt-get install -y --no-install-recommends ${missing[*]}"
log "installing Debian packages ${missing[*]}"
if ! apt-cache show "${missing[0]}" >/dev/null 2>&1; then apt-get update -qq; fi
# The maintainer scripts try to start a service; there is no init system here and none is needed.
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    die "apt-get install ${missing[*]} failed"
