#!/usr/bin/env bash
# A real Kubernetes control plane as local processes, without Docker: kwokctl's binary runtime runs the
# etcd, kube-apiserver, kube-controller-manager and kube-scheduler built by hack/build-tools.sh, plus the
# kwok controller, which plays the kubelets of fake nodes: GPU nodes (tainted) and one CPU node (untainted).
# hack/real-node.sh can add one real node (a kubelet and containerd) to it.
#
#   hack/cluster.sh up                       create (or reuse) the cluster; last line: export KUBECONFIG=...
#   hack/cluster.sh down                     delete the cluster and its kubeconfig
#   hack/cluster.sh status                   list the control-plane processes and the nodes
#   hack/cluster.sh running                  exit 0 when the cluster's kube-apiserver process runs
#   hack/cluster.sh stop-component NAME      stop one control-plane process (e.g. kube-apiserver)
#   hack/cluster.sh start-component NAME     start the stopped processes again and wait until served
#
# Settings (environment):
#   HDC_CLUSTER_NAME  cluster name (default hdc)
#   HDC_CLUSTER_DIR   state: kwok workdir and kubeconfig (default ~/.cache/hd-compute/cluster)
#   HDC_GPU_NODES     number of fake GPU nodes (default 4); their GPUs cycle through 8, 4, 2, 1
#   HDC_STOP_GRACE_S  stop-component: seconds between SIGTERM and SIGKILL (default 5)
# The kubeconfig is $HDC_CLUSTER_DIR/<name>.kubeconfig; ~/.kube/config is never touched.
set -euo pipefail

HACK=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NAME=${HDC_CLUSTER_NAME:-hdc}
STATE=${HDC_CLUSTER_DIR:-$HOME/.cache/hd-compute/cluster}
GPU_NODES=${HDC_GPU_NODES:-4}
GPU_PRODUCT=NVIDIA-H100-80GB-HBM3
GPU_PATTERN=(8 4 2 1)
STOP_GRACE_S=${HDC_STOP_GRACE_S:-5}
SERVICE_CIDR=10.96.0.0/16
KUBERNETES_SERVICE_IP=10.96.0.1 # the first address of SERVICE_CIDR: the kubernetes Service
KUBECONFIG_PATH=$STATE/$NAME.kubeconfig
export KWOK_WORKDIR=$STATE/kwok
CLUSTER_WORKDIR=$KWOK_WORKDIR/clusters/$NAME
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok-controller)

die() { echo "cluster: error: $*" >&2; exit 1; }
log() { echo "cluster: $*" >&2; }

[[ $NAME =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]] || die "HDC_CLUSTER_NAME '$NAME' is not a DNS label"
[[ $GPU_NODES =~ ^[0-9]+$ ]] && ((GPU_NODES >= 1 && GPU_NODES <= 100)) ||
    die "HDC_GPU_NODES must be an integer from 1 to 100, got '$GPU_NODES'"
[[ $STOP_GRACE_S =~ ^[0-9]+$ ]] || die "HDC_STOP_GRACE_S must be a number of seconds, got '$STOP_GRACE_S'"

BIN=$("$HACK/build-tools.sh" --print-bin-dir)
tools() { # Makes sure the pinned tools are built (a no-op in seconds when they are).
    "$HACK/build-tools.sh" >/dev/null
}
kubectl() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }
# kwokctl runs `kubectl` itself (from PATH): it gets ours, not whatever else PATH holds.
kwokctl() { PATH="$BIN:$PATH" KWOK_KUBECTL_BINARY=$BIN/kubectl "$BIN/kwokctl" --v=WARN --name "$NAME" "$@"; }

cluster_exists() { [[ -f $CLUSTER_WORKDIR/kwok.yaml ]]; }

alive() { # pid -> running and not a zombie (a dead child nobody reaped still answers kill -0)
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) && [[ -n $state && $state != Z ]]
}

pid_of() { # component -> pid of its running process, or fail
    local f=$CLUSTER_WORKDIR/pids/$1.pid pid
    [[ -f $f ]] || return 1
    pid=$(<"$f")
    [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" && echo "$pid"
}

# One fake node (kwok plays its kubelet: it has the annotation hack/cluster/kwokctl.yaml selects, so a real kubelet
# can join too). With GPUs: the GPU labels, allocatable nvidia.com/gpu and the nvidia.com/gpu taint; without: an
# untainted CPU node, where workloads without GPUs run (deploy/examples/cpu-only.yaml).
node_manifest() { # name cpus memory-GiB gpus
    local gpu_labels="" gpu_taint="" gpu_resource=""
    if (($4 > 0)); then
        gpu_labels=$'\n    nvidia.com/gpu.present: "true"'
        gpu_labels+=$'\n    nvidia.com/gpu.product: '"$GPU_PRODUCT"
        gpu_labels+=$'\n    nvidia.com/gpu.count: "'"$4"'"'
        gpu_taint=$'\nspec:\n  taints:\n    - {key: nvidia.com/gpu, value: present, effect: NoSchedule}'
        gpu_resource=$'\n    nvidia.com/gpu: "'"$4"'"'
    fi
    cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: $1
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/hostname: $1
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok$gpu_labels$gpu_taint
status:
  allocatable: &resources
    cpu: "$2"
    memory: $3Gi
    pods: "110"$gpu_resource
  capacity: *resources
  nodeInfo:
    architecture: amd64
    operatingSystem: linux
    kubeletVersion: fake
EOF
}

nodes_manifest() {
    local i gpus
    for ((i = 0; i < GPU_NODES; i++)); do
        gpus=${GPU_PATTERN[i % ${#GPU_PATTERN[@]}]}
        node_manifest "hdc-gpu-$i" $((gpus * 16)) $((gpus * 128)) "$gpus"
    done
    node_manifest hdc-cpu-0 64 256 0
}

wait_served() { # seconds
    local deadline=$((SECONDS + $1))
    until kubectl get --raw /readyz >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "kube-apiserver not ready after $1 s; logs: $CLUSTER_WORKDIR/logs/"
        sleep 0.5
    done
}

up() {
    local start=$SECONDS
    tools
    mkdir -p "$STATE"
    chmod 0700 "$STATE"
    if cluster_exists && pid_of kube-apiserver >/dev/null; then
        log "reusing the running cluster '$NAME'"
    else
        if cluster_exists; then
            log "cluster '$NAME' exists but is not running; recreating it"
            kwokctl delete cluster --kubeconfig "$KUBECONFIG_PATH" >&2 || true
        fi
        log "creating cluster '$NAME' (kwokctl binary runtime, $("$BIN/kube-apiserver" --version))"
        # Secure defaults: TLS with client certificates, RBAC and admission on; every component listens on
        # 127.0.0.1 only (hack/cluster/kwokctl.yaml); nothing is downloaded, every binary is local.
        # kwok's Stages come from hack/cluster/kwok-stages.yaml: its defaults plus two that fake a bad image and a
        # crash loop for marker images (the operator's Degraded reasons are tested against them).
        # Service IPs from a /16 (65k): kube-apiserver's default /24 runs out at ~250 Services (1,000 workloads).
        # hack/cluster/kwokctl.yaml also holds what a real node (hack/real-node.sh) needs.
        sed -e "s|@CLUSTER_WORKDIR@|$CLUSTER_WORKDIR|g" -e "s|@KUBERNETES_SERVICE_IP@|$KUBERNETES_SERVICE_IP|g" \
            "$HACK/cluster/kwokctl.yaml" >"$STATE/$NAME-kwokctl.yaml"
        kwokctl create cluster \
            --config "$STATE/$NAME-kwokctl.yaml" \
            --config "$HACK/cluster/kwok-stages.yaml" \
            --runtime binary \
            --kubeconfig "$KUBECONFIG_PATH" \
            --secure-port=true \
            --kube-authorization=true \
            --kube-admission=true \
            --etcd-binary "$BIN/etcd" \
            --kube-apiserver-binary "$BIN/kube-apiserver" \
            --kube-controller-manager-binary "$BIN/kube-controller-manager" \
            --kube-scheduler-binary "$BIN/kube-scheduler" \
            --kwok-controller-binary "$BIN/kwok" \
            --extra-args "kube-apiserver=service-cluster-ip-range=$SERVICE_CIDR" \
            --wait 60s >&2
        chmod 0600 "$KUBECONFIG_PATH"
    fi
    wait_served 60

    log "applying $GPU_NODES fake GPU nodes ($GPU_PRODUCT, GPUs per node cycle ${GPU_PATTERN[*]}) and a CPU node"
    nodes_manifest | kubectl apply -f - >&2
    local crds
    crds="$(dirname "$BIN")/share/prometheus-operator-crds"
    log "installing prometheus-operator CRDs from $(<"$crds/SOURCE")"
    # Server-side apply: these CRDs are too large for the client-side last-applied annotation.
    kubectl apply --server-side --force-conflicts -f "$crds" >&2
    # Right after the apply a CRD may have no status.conditions yet, and `kubectl wait` then fails at once
    # (".status.conditions accessor error: <nil>") instead of waiting: try again for a few seconds.
    local try
    for try in 1 2 3 4 5; do
        kubectl wait --for condition=Established --timeout=60s \
            crd/servicemonitors.monitoring.coreos.com crd/podmonitors.monitoring.coreos.com \
            crd/prometheusrules.monitoring.coreos.com >&2 && break
        ((try < 5)) || die "the prometheus-operator CRDs did not become Established"
        sleep 1
    done
    kubectl wait --for condition=Ready --timeout=60s node -l type=kwok >&2
    log "cluster '$NAME' up in $((SECONDS - start)) s"
    echo "export KUBECONFIG=$KUBECONFIG_PATH"
}

down() {
    if cluster_exists; then
        kwokctl delete cluster --kubeconfig "$KUBECONFIG_PATH" >&2
    else
        log "no cluster '$NAME'"
    fi
    rm -f "$KUBECONFIG_PATH"
}

status() {
    cluster_exists || die "no cluster '$NAME' (run: hack/cluster.sh up)"
    local c pid
    for c in "${COMPONENTS[@]}"; do
        if pid=$(pid_of "$c"); then
            echo "$c: running (pid $pid, rss $(awk '/VmRSS/ {print $2 " " $3}' "/proc/$pid/status"))"
        else
            echo "$c: stopped"
        fi
    done
    kubectl get nodes -L nvidia.com/gpu.count
}

valid_component() {
    local c
    for c in "${COMPONENTS[@]}"; do [[ $c == "$1" ]] && return 0; done
    die "unknown component '$1' (one of: ${COMPONENTS[*]})"
}

stop_component() {
    valid_component "$1"
    cluster_exists || die "no cluster '$NAME'"
    local pid how="SIGTERM" deadline=$((SECONDS + STOP_GRACE_S))
    pid=$(pid_of "$1") || { log "$1 is not running"; return 0; }
    kill -TERM "$pid"
    while alive "$pid"; do
        if ((SECONDS >= deadline)) && [[ $how == SIGTERM ]]; then
            # kube-apiserver's graceful shutdown can hang for minutes on open watches; a hard stop is as
            # real a failure for the clients under test.
            how="SIGKILL after ${STOP_GRACE_S} s"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        ((SECONDS < deadline + 10)) || die "$1 (pid $pid) did not exit"
        sleep 0.2
    done
    # Without its pid file, `kwokctl start cluster` starts this component again (and only this one).
    rm -f "$CLUSTER_WORKDIR/pids/$1.pid"
    log "stopped $1 (pid $pid, $how)"
}

start_component() {
    valid_component "$1"
    cluster_exists || die "no cluster '$NAME'"
    # kwokctl's start skips the processes that are still running and starts the stopped ones.
    kwokctl start cluster >&2
    pid_of "$1" >/dev/null || die "$1 did not start; logs: $CLUSTER_WORKDIR/logs/$1.log"
    wait_served 60
    log "started $1 (pid $(pid_of "$1"))"
}

case ${1:-} in
up) up ;;
down) down ;;
status) status ;;
running) cluster_exists && pid_of kube-apiserver >/dev/null ;;
stop-component) stop_component "${2:?usage: $0 stop-component NAME}" ;;
start-component) start_component "${2:?usage: $0 start-component NAME}" ;;
*) die "usage: $0 up|down|status|running|stop-component NAME|start-component NAME" ;;
esac
