#!/usr/bin/env bash
# Runs the e2e suite (tests marked `k8s`) against a kind cluster instead of the local kwok cluster.
# For machines with Docker; our CI has no Docker engine, so CI uses hack/cluster.sh (docs/testing.md).
#
#   deploy/kind/run-e2e.sh            create the kind cluster (or reuse it), prepare GPU nodes, run the suite
#   HDC_KIND_KEEP=1 ...               keep the cluster afterwards (default: delete it)
#   HDC_KIND_REAL_GPUS=1 ...          the nodes have real GPUs through the NVIDIA device plugin (README.md);
#                                     otherwise the workers advertise fake nvidia.com/gpu extended resources
#   HDC_KIND_CONFIG=path              kind config (default deploy/kind/kind-config.yaml)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CONFIG=${HDC_KIND_CONFIG:-$HERE/kind-config.yaml}
NAME=hdc-e2e
STATE=${HDC_CLUSTER_DIR:-$HOME/.cache/hd-compute/cluster}
export KUBECONFIG=$STATE/kind-$NAME.kubeconfig
FAKE_GPUS_PER_NODE=4

die() { echo "run-e2e: error: $*" >&2; exit 1; }
for cmd in docker kind kubectl; do
    command -v "$cmd" >/dev/null || die "$cmd is not installed (this script needs Docker, kind and kubectl)"
done
docker info >/dev/null 2>&1 || die "the Docker engine is not reachable"
[[ -x $REPO/.venv/bin/python ]] || die "no .venv; run 'make install' first"
mkdir -p "$STATE" && chmod 0700 "$STATE"

if ! kind get clusters | grep -qx "$NAME"; then
    kind create cluster --name "$NAME" --config "$CONFIG" --kubeconfig "$KUBECONFIG" --wait 180s
else
    (umask 077 && kind get kubeconfig --name "$NAME" >"$KUBECONFIG")
fi
cleanup() { [[ ${HDC_KIND_KEEP:-0} == 1 ]] || kind delete cluster --name "$NAME" --kubeconfig "$KUBECONFIG"; }
trap cleanup EXIT

workers=$(kubectl get nodes -l '!node-role.kubernetes.io/control-plane' -o name)
for node in $workers; do
    kubectl label --overwrite "$node" nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3 nvidia.com/gpu.present=true
    kubectl taint --overwrite "$node" nvidia.com/gpu=present:NoSchedule
    if [[ ${HDC_KIND_REAL_GPUS:-0} != 1 ]]; then
        # Extended resources a node advertises by a status patch (the kubelet keeps them): fake GPUs that the
        # scheduler counts like real ones. Pods then run the pause image; nothing touches a GPU.
        kubectl patch "$node" --subresource=status --type=json \
            -p "[{\"op\":\"add\",\"path\":\"/status/capacity/nvidia.com~1gpu\",\"value\":\"$FAKE_GPUS_PER_NODE\"}]"
    fi
done
if [[ ${HDC_KIND_REAL_GPUS:-0} == 1 ]]; then
    kubectl get nodes -o jsonpath='{range .items[*]}{.metadata.name}{"\t"}{.status.allocatable.nvidia\.com/gpu}{"\n"}{end}' |
        awk '$2 > 0 {found=1} END {exit !found}' ||
        die "no node advertises nvidia.com/gpu; install the NVIDIA device plugin first (deploy/kind/README.md)"
fi

# The test pods run the pause image that every kind node already holds (kwok, in CI, never runs images).
node=$(kind get nodes --name "$NAME" | grep -v control-plane | head -1)
HDC_TEST_IMAGE=$(docker exec "$node" crictl images -o json |
    "$REPO/.venv/bin/python" -c 'import json,sys; print(next(t for i in json.load(sys.stdin)["images"] for t in i.get("repoTags") or [] if t.rsplit(":",1)[0].endswith("/pause")))') ||
    die "no pause image found on $node"
export HDC_TEST_IMAGE HDC_TEST_KUBECONFIG=$KUBECONFIG
cd "$REPO"
.venv/bin/python -m pytest -m k8s "$@"
