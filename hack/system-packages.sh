#!/usr/bin/env bash
# Installs the Debian packages the test suite starts as real servers and that Go modules do not provide:
# PostgreSQL (the ContinuousBenchmark's PostgreSQL store is tested against a throwaway initdb cluster), and what
# the real node (hack/real-node.sh) runs beside the binaries built from Go modules: runc (the OCI runtime under
# containerd), iptables and nftables (kube-proxy's and the CNI plugins' rules on the nf_tables backend, and their
# removal), socat (the API server's forward on the node IP), busybox-static (the test image of tests/e2e/real_node,
# a single static binary).
# Idempotent: does nothing when the binaries are already there. Needs root (CI runs as root) or prints the
# command to run.
set -euo pipefail

log() { echo "system-packages: $*" >&2; }
die() { echo "system-packages: error: $*" >&2; exit 1; }

missing=()
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap) # make images: the Debian rootfs, no daemon
[[ -x /usr/sbin/runc ]] || missing+=(runc)
[[ -x /usr/sbin/iptables ]] || missing+=(iptables)
[[ -x /usr/sbin/nft ]] || missing+=(nftables)
[[ -x /usr/bin/socat ]] || missing+=(socat)
[[ -x /bin/busybox ]] || missing+=(busybox-static)
((${#missing[@]} == 0)) && exit 0

command -v apt-get >/dev/null 2>&1 ||
    die "missing ${missing[*]} and apt-get is not available; install ${missing[*]} or set HDC_TEST_POSTGRES_URL"
((EUID == 0)) || die "missing ${missing[*]}; run: sudo apt-get install -y --no-install-recommends ${missing[*]}"
log "installing Debian packages ${missing[*]}"
if ! apt-cache show "${missing[0]}" >/dev/null 2>&1; then apt-get update -qq; fi
# The maintainer scripts try to start a service; there is no init system here and none is needed.
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    die "apt-get install ${missing[*]} failed"
