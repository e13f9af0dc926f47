#!/usr/bin/env bash
# Builds what the real node (hack/real-node.sh) runs beside the control plane's kubelet and kube-proxy (those come
# from hack/build-tools.sh, the same k8s.io/kubernetes module as the control plane): containerd with its shim and
# ctr, the CNI plugins, CoreDNS, all from the Go modules pinned in hack/real-node/tools/*/go.mod; the pause image
# (gcc -static of kubernetes' build/pause/linux/pause.c at the control plane's version) and a busybox test image
# (Debian's busybox-static), both packed as OCI archives by oci-archive.py. hack/build-tools.sh calls this script.
#
#   hack/real-node/build-tools.sh                  build what is missing (a no-op in well under a second once built)
#   hack/real-node/build-tools.sh --print-dir      print the output directory for the current pins; build nothing
#   hack/real-node/build-tools.sh --check          print the output directory if everything is built; fail if not
#
# Output: ${HDC_TOOLS_DIR:-$HOME/.cache/hd-compute/tools}/real-node-<pin-hash>/{bin,cni-bin,images}. The pin hash
# covers the go.mod/go.sum files here, hack/tools/go.mod (the pause source's version), this script, the OCI writer
# and the Go version.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HACK=$(dirname "$HERE")
TOOLS_ROOT=${HDC_TOOLS_DIR:-$HOME/.cache/hd-compute/tools}
# The pause image's tag: kubernetes' build/pause/Makefile TAG at the pinned release.
PAUSE_TAG=3.10.2
PAUSE_IMAGE=localhost/hdc-real-node/pause:$PAUSE_TAG
BUSYBOX_IMAGE=localhost/hdc-real-node/busybox:test

die() { echo "real-node tools: error: $*" >&2; exit 1; }
log() { echo "real-node tools: $*" >&2; }

command -v go >/dev/null 2>&1 || die "Go is not installed; see hack/build-tools.sh for the version it needs."
pin_hash() {
    (
        cd "$HERE"
        cat tools/containerd/go.mod tools/containerd/go.sum tools/cni/go.mod tools/cni/go.sum \
            tools/coredns/go.mod tools/coredns/go.sum "$HACK/tools/go.mod" build-tools.sh oci-archive.py
        echo "$(go env GOVERSION) $(go env GOOS)/$(go env GOARCH) $PAUSE_IMAGE $BUSYBOX_IMAGE"
    ) | sha256sum | cut -c1-12
}
OUTDIR=$TOOLS_ROOT/real-node-$(pin_hash)
BIN=$OUTDIR/bin
CNI_BIN=$OUTDIR/cni-bin
IMAGES=$OUTDIR/images

MODE=${1:-build}
case $MODE in
--print-dir) echo "$OUTDIR"; exit 0 ;;
build | --check) ;;
*) die "unknown argument '$1' (usage: $0 [--print-dir|--check])" ;;
esac

BINARIES=(containerd containerd-shim-runc-v2 ctr coredns)
CNI_PLUGINS=(bridge host-local loopback portmap)
complete() {
    local b
    for b in "${BINARIES[@]}"; do [[ -x $BIN/$b ]] || return 1; done
    for b in "${CNI_PLUGINS[@]}"; do [[ -x $CNI_BIN/$b ]] || return 1; done
    [[ -s $IMAGES/pause.oci.tar && -s $IMAGES/busybox.oci.tar && -s $IMAGES/names ]]
}
if complete; then
    echo "$OUTDIR"
    exit 0
fi
[[ $MODE != --check ]] || die "the real node's tools are not built in $OUTDIR; run 'make tools' (hack/build-tools.sh)"
mkdir -p "$BIN" "$CNI_BIN" "$IMAGES"
log "building into $OUTDIR"
start=$(date +%s)

build() { # module-dir output tags ldflags package
    [[ -x $2 ]] && return 0
    log "building $(basename "$2") ..."
    (cd "$HERE/tools/$1" && CGO_ENABLED=0 go build -trimpath -buildvcs=false -mod=readonly -tags "$3" \
        -ldflags "-s -w $4" -o "$2.tmp" "$5") || die "building $5 failed; see the Go output above"
    mv "$2.tmp" "$2"
}
version() { (cd "$HERE/tools/$1" && go list -m -f '{{.Version}}' "$2"); }

# containerd: no btrfs/devmapper/zfs snapshotters (the node uses overlayfs; they would need cgo headers).
CONTAINERD=github.com/containerd/containerd/v2
v=$(version containerd $CONTAINERD)
for b in containerd containerd-shim-runc-v2 ctr; do
    build containerd "$BIN/$b" "no_btrfs no_devmapper no_zfs" "-X $CONTAINERD/version.Version=$v" "$CONTAINERD/cmd/$b"
done
PLUGINS=github.com/containernetworking/plugins
v=$(version cni $PLUGINS)
for p in main/bridge ipam/host-local main/loopback meta/portmap; do
    build cni "$CNI_BIN/$(basename $p)" "" "-X $PLUGINS/pkg/utils/buildversion.BuildVersion=$v" "$PLUGINS/plugins/$p"
done
build coredns "$BIN/coredns" "" "" github.com/coredns/coredns

# The pause image: the sandbox every pod's network namespace hangs on, from the control plane's kubernetes source.
K8S_VERSION=$(cd "$HACK/tools" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
K8S_DIR=$(cd "$HACK/tools" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)
[[ -n $K8S_DIR ]] || K8S_DIR=$(cd "$HACK/tools" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
PAUSE_C=$K8S_DIR/build/pause/linux/pause.c
[[ -s $PAUSE_C ]] || die "$PAUSE_C is missing from k8s.io/kubernetes@$K8S_VERSION"
command -v gcc >/dev/null 2>&1 || die "gcc is needed for the pause image (Debian: gcc, libc6-dev)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_TAG-$K8S_VERSION" -o "$work/pause" "$PAUSE_C" ||
    die "gcc -static of $PAUSE_C failed (Debian: libc6-dev holds the static libc)"
strip "$work/pause"
python3 "$HERE/oci-archive.py" --name "$PAUSE_IMAGE" --file "$work/pause=/pause" --entrypoint /pause \
    --user 65535:65535 -o "$IMAGES/pause.oci.tar" >&2

# The test image of tests/e2e/real_node: one static busybox (httpd for probes, sh, id, tail for memory).
[[ -x /bin/busybox ]] || die "/bin/busybox is missing; run hack/system-packages.sh (Debian: busybox-static)"
python3 "$HERE/oci-archive.py" --name "$BUSYBOX_IMAGE" --file /bin/busybox=/bin/busybox --link /bin/sh=busybox \
    --entrypoint /bin/busybox --user 10001:10001 -o "$IMAGES/busybox.oci.tar" >&2
printf 'pause %s\nbusybox %s\n' "$PAUSE_IMAGE" "$BUSYBOX_IMAGE" >"$IMAGES/names"

complete || die "internal error: $OUTDIR is incomplete after the build"
log "done in $(($(date +%s) - start)) s: $OUTDIR"
echo "$OUTDIR"
