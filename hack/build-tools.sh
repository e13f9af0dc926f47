#!/usr/bin/env bash
# Builds the pinned test tooling (a real Kubernetes control plane, etcd, kwok, kubeconform, helm,
# prometheus-adapter) from Go modules into a cache outside the repo, and links Prometheus, promtool and
# Alertmanager from Debian packages. Pins live in hack/tools/**/go.mod and in the constants below.
# The real node's kubelet and kube-proxy are built here with the control plane (same module, same version); the
# rest of the real node (containerd, CNI plugins, CoreDNS, the pause image) by hack/real-node/build-tools.sh,
# which a build (not --check) runs too, with its own pins and output directory.
#
#   hack/build-tools.sh                 build what is missing (a no-op in seconds once built)
#   hack/build-tools.sh --print-bin-dir print the bin directory for the current pins; build nothing
#   hack/build-tools.sh --check         print the bin directory if everything is built; fail if not
#
# Output: ${HDC_TOOLS_DIR:-$HOME/.cache/hd-compute/tools}/<pin-hash>/{bin,share}. The pin hash covers the
# go.mod/go.sum files, this script and the Go version, so changing a pin builds into a fresh directory.
set -euo pipefail

HACK=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MODDIR=$HACK/tools
TOOLS_ROOT=${HDC_TOOLS_DIR:-$HOME/.cache/hd-compute/tools}

# Pins that are not Go build inputs. The prometheus-operator CRDs come from this release's module zip,
# fetched through the Go module cache (checksummed by the Go checksum database), never copied into the repo.
PROM_OPERATOR_MODULE=github.com/prometheus-operator/prometheus-operator
PROM_OPERATOR_VERSION=v0.85.0
PROM_OPERATOR_CRDS=(servicemonitors podmonitors prometheusrules)
# Prometheus, promtool and Alertmanager: Debian's packages (see docs/testing.md for why).
DEBIAN_PROMETHEUS_PACKAGES=(prometheus prometheus-alertmanager)

MIN_GO_MINOR=26 # k8s.io/kubernetes v1.36 and kwok v0.8 declare `go 1.26.0`

die() { echo "build-tools: error: $*" >&2; exit 1; }
log() { echo "build-tools: $*" >&2; }

command -v go >/dev/null 2>&1 || die "Go is not installed (need Go >= 1.${MIN_GO_MINOR}); install it from the Go downloads page or your distribution, then rerun."
GOVERSION=$(go env GOVERSION)
go_minor=$(sed -E 's/^go1\.([0-9]+).*/\1/' <<<"$GOVERSION")
[[ $go_minor =~ ^[0-9]+$ ]] || die "cannot parse the Go version '$GOVERSION'"
((go_minor >= MIN_GO_MINOR)) || die "Go $GOVERSION is too old; the pinned modules need Go >= 1.${MIN_GO_MINOR}."

pin_hash() {
    (
        cd "$HACK"
        cat tools/go.mod tools/go.sum tools/cmd/etcd/main.go \
            tools/helm/go.mod tools/helm/go.sum \
            tools/prometheus-adapter/go.mod tools/prometheus-adapter/go.sum build-tools.sh \
            real-node/tools/kube-proxy.go.sum
        echo "$GOVERSION $(go env GOOS)/$(go env GOARCH)"
    ) | sha256sum | cut -c1-12
}
OUTDIR=$TOOLS_ROOT/$(pin_hash)
BIN=$OUTDIR/bin
SHARE=$OUTDIR/share

MODE=${1:-build}
case $MODE in
--print-bin-dir) echo "$BIN"; exit 0 ;;
build | --check) ;;
*) die "unknown argument '$1' (usage: $0 [--print-bin-dir|--check])" ;;
esac

GO_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy etcd kwok kwokctl kubeconform helm prometheus-adapter)
LINKED_BINARIES=(prometheus promtool alertmanager)
CRD_FILES=()
for c in "${PROM_OPERATOR_CRDS[@]}"; do CRD_FILES+=("$SHARE/prometheus-operator-crds/monitoring.coreos.com_$c.yaml"); done

complete() {
    local b f
    for b in "${GO_BINARIES[@]}" "${LINKED_BINARIES[@]}"; do [[ -x $BIN/$b ]] || return 1; done
    for f in "${CRD_FILES[@]}"; do [[ -s $f ]] || return 1; done
}
if complete; then
    log "up to date in $OUTDIR"
    [[ $MODE == --check ]] || "$HACK/real-node/build-tools.sh" >/dev/null
    echo "$BIN"
    exit 0
fi
[[ $MODE != --check ]] || die "the tools for these pins are not built in $OUTDIR; run 'make tools' (hack/build-tools.sh)"
mkdir -p "$BIN" "$SHARE"
log "building into $OUTDIR with $GOVERSION (GOPROXY=$(go env GOPROXY))"

# Runs "$@" while printing a heartbeat every 30 s, so a long first build visibly makes progress.
with_progress() {
    local label=$1
    shift
    local start
    start=$(date +%s)
    log "building $label ..."
    (while sleep 30; do log "  ... still building $label ($(($(date +%s) - start)) s so far)"; done) &
    local ticker=$! rc=0
    "$@" || rc=$?
    kill "$ticker" 2>/dev/null || true
    wait "$ticker" 2>/dev/null || true
    ((rc == 0)) || die "building $label failed (exit $rc); see the Go output above."
    log "built $label in $(($(date +%s) - start)) s"
}

no_modules() { # what, go's output
    die "cannot download $1 (GOPROXY=$(go env GOPROXY)): $(tr '\n' ' ' <<<"$2" | cut -c1-300)
       The tools are built from Go modules; this machine must reach the Go module proxy."
}

# Fetches one module through the module cache and prints a field of `go mod download -json`.
module_field() { # module@version field
    local json
    json=$(cd "$MODDIR" && go mod download -json "$1" 2>&1) || no_modules "the Go module $1" "$json"
    sed -n "s/^[[:space:]]*\"$2\": \"\(.*\)\",\{0,1\}$/\1/p" <<<"$json" | head -1
}

# The version of a module in a tools module's build list (loading it downloads the go.mod files).
mod_version() { # module-dir module
    local out
    out=$(cd "$1" && go list -m -f '{{.Version}}' "$2" 2>&1) || no_modules "the dependencies of $1" "$out"
    echo "$out"
}

build() { # module-dir output-name package [ldflags]
    local dir=$1 out=$2 pkg=$3 ldflags=${4:-}
    [[ -x $BIN/$out ]] && return 0
    (cd "$dir" && CGO_ENABLED=0 go build -trimpath -buildvcs=false -mod=readonly \
        -ldflags "-s -w $ldflags" -o "$BIN/$out.tmp" "$pkg") && mv "$BIN/$out.tmp" "$BIN/$out"
}

total_start=$(date +%s)

# 1. Kubernetes control plane and kubectl. kwokctl reads the version from `--version`, so stamp it.
K8S_VERSION=$(mod_version "$MODDIR" k8s.io/kubernetes)
K8S_COMMIT=$(module_field "k8s.io/kubernetes@$K8S_VERSION" Hash)
K8S_DATE=$(cd "$MODDIR" && go list -m -f '{{with .Time}}{{.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' k8s.io/kubernetes)
[[ $K8S_VERSION =~ ^v([0-9]+)\.([0-9]+)\. ]] || die "unexpected k8s.io/kubernetes version '$K8S_VERSION'"
k8s_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    k8s_ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=${BASH_REMATCH[1]} -X $pkg.gitMinor=${BASH_REMATCH[2]}"
    k8s_ldflags+=" -X $pkg.gitCommit=$K8S_COMMIT -X $pkg.gitTreeState=clean -X $pkg.buildDate=$K8S_DATE"
done
build_k8s() {
    local b
    for b in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet; do
        build "$MODDIR" "$b" "k8s.io/kubernetes/cmd/$b" "$k8s_ldflags" || return 1
    done
    build_kube_proxy
}
# kube-proxy imports packages (netlink, netns, ipvs, knftables) whose checksums hack/tools/go.sum lacks: it is
# built from a scratch copy of the module whose go.sum adds hack/real-node/tools/kube-proxy.go.sum (the versions
# are those of hack/tools/go.mod's module graph; -mod=readonly still verifies every module against the sums).
build_kube_proxy() {
    [[ -x $BIN/kube-proxy ]] && return 0
    local scratch rc=0
    scratch=$(mktemp -d)
    cp "$MODDIR/go.mod" "$scratch/"
    cat "$MODDIR/go.sum" "$HACK/real-node/tools/kube-proxy.go.sum" >"$scratch/go.sum"
    build "$scratch" kube-proxy k8s.io/kubernetes/cmd/kube-proxy "$k8s_ldflags" || rc=$?
    rm -rf "$scratch"
    return $rc
}
with_progress "Kubernetes $K8S_VERSION (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet, kube-proxy; ~17 min cold on 2 cores)" build_k8s

# 2. etcd, kwok, kwokctl, kubeconform (same module, same dependency graph).
build_misc() {
    build "$MODDIR" etcd ./cmd/etcd &&
        build "$MODDIR" kwok sigs.k8s.io/kwok/cmd/kwok &&
        build "$MODDIR" kwokctl sigs.k8s.io/kwok/cmd/kwokctl &&
        build "$MODDIR" kubeconform github.com/yannh/kubeconform/cmd/kubeconform \
            "-X main.version=$(mod_version "$MODDIR" github.com/yannh/kubeconform)"
}
with_progress "etcd $(mod_version "$MODDIR" go.etcd.io/etcd/server/v3), kwok $(mod_version "$MODDIR" sigs.k8s.io/kwok), kubeconform" build_misc

# 3. helm and prometheus-adapter, each in a module of its own (their k8s.io libraries differ from ours).
HELM_VERSION=$(mod_version "$MODDIR/helm" helm.sh/helm/v3)
with_progress "helm $HELM_VERSION" build "$MODDIR/helm" helm helm.sh/helm/v3/cmd/helm \
    "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.metadata= -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
with_progress "prometheus-adapter $(mod_version "$MODDIR/prometheus-adapter" sigs.k8s.io/prometheus-adapter)" \
    build "$MODDIR/prometheus-adapter" prometheus-adapter sigs.k8s.io/prometheus-adapter/cmd/adapter

# 4. prometheus-operator CRDs from the upstream release, through the module cache.
op_dir=$(module_field "$PROM_OPERATOR_MODULE@$PROM_OPERATOR_VERSION" Dir)
mkdir -p "$SHARE/prometheus-operator-crds"
for c in "${PROM_OPERATOR_CRDS[@]}"; do
    src=$op_dir/example/prometheus-operator-crd/monitoring.coreos.com_$c.yaml
    [[ -s $src ]] || die "$src is missing from $PROM_OPERATOR_MODULE@$PROM_OPERATOR_VERSION"
    install -m 0644 "$src" "$SHARE/prometheus-operator-crds/"
done
echo "$PROM_OPERATOR_MODULE@$PROM_OPERATOR_VERSION" >"$SHARE/prometheus-operator-crds/SOURCE"
log "prometheus-operator CRDs (${PROM_OPERATOR_CRDS[*]}) from $PROM_OPERATOR_VERSION"

# 5. Prometheus, promtool, Alertmanager from Debian packages, linked into the bin directory.
find_prometheus_tool() { # name -> path
    local p
    for p in "$(command -v "$1" 2>/dev/null || true)" "/usr/bin/$1" "/usr/bin/prometheus-$1"; do
        [[ -n $p && -x $p ]] && { echo "$p"; return 0; }
    done
    return 1
}
if ! find_prometheus_tool prometheus >/dev/null || ! find_prometheus_tool alertmanager >/dev/null; then
    command -v apt-get >/dev/null 2>&1 ||
        die "Prometheus/Alertmanager are not installed and apt-get is missing; install the Debian packages ${DEBIAN_PROMETHEUS_PACKAGES[*]} or put prometheus, promtool and alertmanager on PATH."
    ((EUID == 0)) ||
        die "Prometheus/Alertmanager are not installed; run: sudo apt-get install --no-install-recommends ${DEBIAN_PROMETHEUS_PACKAGES[*]}"
    log "installing Debian packages ${DEBIAN_PROMETHEUS_PACKAGES[*]}"
    if ! apt-cache show prometheus >/dev/null 2>&1; then apt-get update -qq; fi
    # The packages' maintainer scripts try to start services; there is no init system to start them here.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${DEBIAN_PROMETHEUS_PACKAGES[@]}" >/dev/null ||
        die "apt-get install ${DEBIAN_PROMETHEUS_PACKAGES[*]} failed"
fi
for b in "${LINKED_BINARIES[@]}"; do
    p=$(find_prometheus_tool "$b") || die "$b not found after installing ${DEBIAN_PROMETHEUS_PACKAGES[*]}"
    ln -sfn "$p" "$BIN/$b"
done

complete || die "internal error: $OUTDIR is incomplete after the build"
"$HACK/real-node/build-tools.sh" >/dev/null
log "done in $(($(date +%s) - total_start)) s: $OUTDIR"
echo "$BIN"
