#!/usr/bin/env bash
# One real node in the local cluster of hack/cluster.sh: containerd (runc, CNI bridge), a kubelet, kube-proxy
# (iptables mode) and CoreDNS as host processes, so pods run as real containers next to kwok's fake nodes.
#
#   hack/real-node.sh up       start it (or reuse the running one) and wait until the node is Ready
#   hack/real-node.sh down     delete the node and stop everything; leave the host as `up` found it
#   hack/real-node.sh status   exit 0 when its processes run and the node is Ready (and say so)
#   hack/real-node.sh check    only the host checks of `up`: exit 0, or EXIT_UNSUPPORTED with the reason
#
# The node is labelled and tainted hdc.dev/real-node=true (NoSchedule): only pods that ask for it land there.
# Images: the pause image and a busybox test image (hack/real-node/build-tools.sh), and the archives of
# `make images` (hack/images) when they exist, imported with `ctr -n k8s.io images import`; pods use them with
# imagePullPolicy Never (nothing is pulled).
#
# Host-global state (one real node per machine): mounts under its directory and in /run/netns, the kubepods
# cgroups, iptables chains (CNI-*, KUBE-*), a bridge, sysctls the kubelet, the CNI plugins and kube-proxy set,
# /run/containerd, /var/lib/cni, /var/lib/kubelet, /var/log/pods, /var/log/containers. `up` records what existed
# and the sysctls' values first; `down` removes what was not there and restores the values.
#
# Settings (environment): HDC_CLUSTER_NAME, HDC_CLUSTER_DIR (as hack/cluster.sh); HDC_REAL_NODE_IP (default: the
# address of the default route's interface). Needs root, overlayfs and the cgroup controllers; where they are
# missing, `up` and `check` exit with EXIT_UNSUPPORTED and say which.
set -euo pipefail

HACK=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HACK")
CONF=$HACK/real-node
NAME=${HDC_CLUSTER_NAME:-hdc}
STATE=${HDC_CLUSTER_DIR:-$HOME/.cache/hd-compute/cluster}
KUBECONFIG_PATH=$STATE/$NAME.kubeconfig
PKI=$STATE/kwok/clusters/$NAME/pki
DIR=$STATE/real-node-$NAME
NODE=hdc-real-0
NODE_LABEL=hdc.dev/real-node=true
NODE_TAINT=hdc.dev/real-node=true:NoSchedule
POD_CIDR=10.244.0.0/24
BRIDGE=hdcreal0
KUBELET_PORT=10250
EXIT_UNSUPPORTED=3
READY_TIMEOUT_S=60
# Host paths a kubelet or containerd writes whatever their own directories say.
HOST_PATHS=(/run/containerd /var/lib/cni /run/netns /var/lib/kubelet /var/log/pods /var/log/containers)
# Sysctls that the kubelet (its kernel defaults), the bridge plugin and kube-proxy may change.
SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys
    kernel.keys.root_maxbytes net.ipv4.ip_forward net.ipv4.conf.all.route_localnet net.ipv6.conf.all.forwarding
    net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables)
COMPONENTS=(containerd kubelet kube-proxy coredns apiserver-forward) # started in this order, stopped in reverse

die() { echo "real-node: error: $*" >&2; exit 1; }
unsupported() { echo "real-node: this machine cannot run a real node: $*" >&2; exit "$EXIT_UNSUPPORTED"; }
log() { echo "real-node: $*" >&2; }

BIN=$("$HACK/build-tools.sh" --print-bin-dir)
RN_TOOLS=$("$HACK/real-node/build-tools.sh" --print-dir)
CTR=("$RN_TOOLS/bin/ctr" --address "$DIR/containerd/containerd.sock" --namespace k8s.io)
kubectl() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }

node_ip() {
    [[ -n ${HDC_REAL_NODE_IP:-} ]] && { echo "$HDC_REAL_NODE_IP"; return; }
    ip -4 route get 192.0.2.254 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p' | head -1
}

# The host checks: what this machine must offer, and what must be built or running.
check_host() {
    ((EUID == 0)) || unsupported "not root (it runs containerd and runc, mounts overlayfs, writes iptables rules)"
    grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || unsupported "no overlayfs in this kernel"
    local c
    if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
        for c in cpu memory pids; do
            grep -qw "$c" /sys/fs/cgroup/cgroup.controllers || unsupported "the cgroup v2 controller '$c' is missing"
        done
    else
        for c in cpu cpuacct cpuset memory pids; do
            [[ -f /sys/fs/cgroup/$c/cgroup.procs ]] || unsupported "the cgroup v1 controller '$c' is not mounted"
        done
    fi
    [[ -n $(node_ip) ]] || unsupported "no IPv4 address on the default route's interface (set HDC_REAL_NODE_IP)"
    local tool
    for tool in /usr/sbin/runc /usr/sbin/iptables /usr/sbin/nft /usr/bin/socat; do
        [[ -x $tool ]] || die "$tool is missing; run hack/system-packages.sh (make tools)"
    done
    iptables -t nat -S >/dev/null 2>&1 || unsupported "iptables cannot read the nat table (no CAP_NET_ADMIN?)"
}

check_ready_to_start() {
    "$HACK/real-node/build-tools.sh" --check >/dev/null || die "run 'make tools' first"
    [[ -x $BIN/kubelet && -x $BIN/kube-proxy ]] || die "kubelet/kube-proxy are not built; run 'make tools' first"
    "$HACK/cluster.sh" running || die "the cluster '$NAME' is not running; run hack/cluster.sh up first"
    # A cluster made before hack/cluster/kwokctl.yaml held the real-node settings lets kwok fake this node's pods.
    grep -q 'manage-all-nodes=false' "$STATE/kwok/clusters/$NAME/kwok.yaml" ||
        die "the cluster '$NAME' was created without the real-node settings; recreate it (hack/cluster.sh down; up)"
}

pidfile() { echo "$DIR/pids/$1.pid"; }
alive() { # component -> its process runs
    local f pid state
    f=$(pidfile "$1")
    [[ -f $f ]] || return 1
    pid=$(<"$f")
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) && [[ -n $state && $state != Z ]]
}

start() { # component command...: in its own session, niced (the machine is shared), logs in $DIR/logs
    local name=$1
    shift
    alive "$name" && return 0
    setsid nice -n 5 "$@" >"$DIR/logs/$name.log" 2>&1 </dev/null &
    echo $! >"$(pidfile "$name")"
}

stop() { # component: SIGTERM, then SIGKILL after 15 s
    local f pid i
    f=$(pidfile "$1")
    [[ -f $f ]] || return 0
    pid=$(<"$f")
    if alive "$1"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 150; i++)); do alive "$1" || break; sleep 0.1; done
        alive "$1" && { log "$1 (pid $pid) ignored SIGTERM; SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; }
    fi
    rm -f "$f"
}

render() { # template -> stdout, with the @NAMES@ replaced
    sed -e "s|@DIR@|$DIR|g" -e "s|@NODE_IP@|$NODE_IP|g" -e "s|@NODE@|$NODE|g" -e "s|@POD_CIDR@|$POD_CIDR|g" \
        -e "s|@BRIDGE@|$BRIDGE|g" -e "s|@CNI_BIN@|$RN_TOOLS/cni-bin|g" -e "s|@RUNC@|/usr/sbin/runc|g" \
        -e "s|@PAUSE_IMAGE@|$(image_name pause)|g" -e "s|@CA@|$PKI/ca.crt|g" -e "s|@KUBECONFIG@|$KUBECONFIG_PATH|g" \
        -e "s|@KUBELET_PORT@|$KUBELET_PORT|g" "$1"
}

image_name() { awk -v k="$1" '$1 == k {print $2}' "$RN_TOOLS/images/names"; }

# Client credentials signed by the cluster's CA, and a kubeconfig for each.
credentials() { # name CN O
    local key=$DIR/pki/$1.key crt=$DIR/pki/$1.crt server
    server=$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$key" \
        -subj "/O=$3/CN=$2" -out "$DIR/pki/$1.csr" 2>/dev/null
    openssl x509 -req -in "$DIR/pki/$1.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial -days 30 \
        -extfile <(printf 'keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n') \
        -out "$crt" 2>/dev/null
    cat >"$DIR/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: $NAME, cluster: {server: "$server", certificate-authority: "$PKI/ca.crt"}}]
users: [{name: $1, user: {client-certificate: "$crt", client-key: "$key"}}]
contexts: [{name: $NAME, context: {cluster: $NAME, user: $1}}]
current-context: $NAME
EOF
    chmod 0600 "$key" "$DIR/$1.kubeconfig"
}

# What the host had before the first `up`: which of HOST_PATHS existed, the sysctls' values, the iptables chains
# and network namespaces. Written once; `down` undoes against it and removes it.
record_host() {
    [[ -f $DIR/host-before/sysctl.conf ]] && return 0
    mkdir -p "$DIR/host-before"
    local p s
    for p in "${HOST_PATHS[@]}"; do [[ -e $p ]] && echo "$p"; done >"$DIR/host-before/paths"
    for s in "${SYSCTLS[@]}"; do sysctl -e "$s" 2>/dev/null | sed 's/ = /=/'; done >"$DIR/host-before/sysctl.conf.tmp"
    ls /run/netns 2>/dev/null >"$DIR/host-before/netns" || true
    iptables_chains >"$DIR/host-before/chains"
    nft list tables 2>/dev/null | { grep "^table" || true; } >"$DIR/host-before/nft-tables"
    mv "$DIR/host-before/sysctl.conf.tmp" "$DIR/host-before/sysctl.conf"
}

iptables_chains() { # "<command> <table> <chain>" for every chain of the CNI plugins and kube-proxy
    local cmd t
    for cmd in iptables ip6tables; do
        for t in filter nat mangle; do
            "$cmd-save" -t "$t" 2>/dev/null | sed -n "s/^:\(\(CNI\|KUBE\)-[^ ]*\).*/$cmd $t \1/p"
        done
    done
}

up() {
    local start_s=$SECONDS
    check_host
    check_ready_to_start
    if status >/dev/null 2>&1; then
        log "node $NODE is up already (hack/real-node.sh status)"
        return 0
    fi
    NODE_IP=$(node_ip)
    mkdir -p "$DIR"/{logs,pids,pki,cni-conf,cni-ipam,cdi,pod-logs,volume-plugins,containerd}
    chmod 0700 "$DIR"
    record_host
    # A failed start leaves nothing behind: undo what was done, keep the logs.
    trap 'rc=$?; ((rc == 0)) || { log "up failed; cleaning up (logs: $DIR/logs)"; down >/dev/null 2>&1 || true; }' EXIT

    render "$CONF/containerd.toml" >"$DIR/containerd.toml"
    render "$CONF/cni.conflist" >"$DIR/cni-conf/10-hdc-real-node.conflist"
    start containerd "$RN_TOOLS/bin/containerd" --config "$DIR/containerd.toml"
    local i
    for ((i = 0; i < 100; i++)); do "${CTR[@]}" version >/dev/null 2>&1 && break; sleep 0.1; done
    "${CTR[@]}" version >/dev/null 2>>"$DIR/logs/ctr.log" || die "containerd did not start; see $DIR/logs/containerd.log"
    import_images

    credentials kubelet "system:node:$NODE" system:nodes
    credentials kube-proxy system:kube-proxy system:node-proxier
    render "$CONF/kubelet.yaml" >"$DIR/kubelet.yaml"
    render "$CONF/kube-proxy.yaml" >"$DIR/kube-proxy.yaml"
    render "$CONF/Corefile" >"$DIR/Corefile"
    start kubelet "$BIN/kubelet" --config "$DIR/kubelet.yaml" --kubeconfig "$DIR/kubelet.kubeconfig" \
        --root-dir "$DIR/kubelet" --cert-dir "$DIR/kubelet-pki" --hostname-override "$NODE" --node-ip "$NODE_IP" \
        --node-labels "$NODE_LABEL" --register-with-taints "$NODE_TAINT" --v=1
    start kube-proxy "$BIN/kube-proxy" --config "$DIR/kube-proxy.yaml" --v=1
    start coredns "$RN_TOOLS/bin/coredns" -conf "$DIR/Corefile"
    # Pods reach the API server through the kubernetes Service, whose endpoint is <node IP>:<port>, while the
    # API server listens on 127.0.0.1 only: forward that port, for the pod network's addresses only.
    local port
    port=$(kubectl get endpointslices -n default -l kubernetes.io/service-name=kubernetes \
        -o jsonpath='{.items[0].ports[0].port}')
    start apiserver-forward socat "TCP-LISTEN:$port,bind=$NODE_IP,fork,reuseaddr,range=$POD_CIDR" "TCP:127.0.0.1:$port"

    local deadline=$((SECONDS + READY_TIMEOUT_S))
    until [[ $(kubectl get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]; do
        alive kubelet || die "the kubelet exited; see $DIR/logs/kubelet.log"
        ((SECONDS < deadline)) || die "node $NODE not Ready after $READY_TIMEOUT_S s; see $DIR/logs/kubelet.log"
        sleep 0.5
    done
    trap - EXIT
    log "node $NODE Ready in $((SECONDS - start_s)) s (node IP $NODE_IP, taint $NODE_TAINT; logs in $DIR/logs)"
}

# The pause and test images always; the archives `make images` wrote (named in hack/images/images.env) that exist.
import_images() {
    local archive archives=("$RN_TOOLS/images/pause.oci.tar" "$RN_TOOLS/images/busybox.oci.tar")
    if [[ -f $HACK/images/images.env ]]; then
        for archive in $(sed -n 's/^HDC_[A-Z_]*_ARCHIVE=//p' "$HACK/images/images.env"); do
            [[ -f $REPO/$archive ]] && archives+=("$REPO/$archive")
        done
    fi
    for archive in "${archives[@]}"; do
        "${CTR[@]}" images import "$archive" >/dev/null 2>>"$DIR/logs/ctr.log" ||
            die "ctr images import $archive failed; see $DIR/logs/containerd.log"
        log "imported $(basename "$archive")"
    done
}

down() {
    local start_s=$SECONDS
    ((EUID == 0)) || unsupported "not root"
    [[ -d $DIR ]] || { log "no real node for the cluster '$NAME'"; return 0; }
    if alive kubelet && kubectl get node "$NODE" >/dev/null 2>&1; then
        # The kubelet tears its pods down itself (CNI DEL, unmounts, cgroups) while it still runs.
        kubectl delete pods -A --field-selector "spec.nodeName=$NODE" --grace-period=5 --wait=true --timeout=60s \
            >/dev/null 2>&1 || log "not every pod on $NODE was deleted within 60 s; stopping anyway"
    fi
    kubectl delete node "$NODE" --ignore-not-found --timeout=30s >/dev/null 2>&1 || true
    local c
    for ((c = ${#COMPONENTS[@]} - 1; c >= 1; c--)); do stop "${COMPONENTS[c]}"; done
    "$BIN/kube-proxy" --cleanup --v=0 >/dev/null 2>&1 || true
    if alive containerd; then # whatever the kubelet left: stop the tasks, then remove the containers
        local id
        for id in $("${CTR[@]}" tasks ls -q 2>/dev/null); do "${CTR[@]}" tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
        for id in $("${CTR[@]}" tasks ls -q 2>/dev/null); do "${CTR[@]}" tasks rm -f "$id" >/dev/null 2>&1 || true; done
        for id in $("${CTR[@]}" containers ls -q 2>/dev/null); do "${CTR[@]}" containers rm "$id" >/dev/null 2>&1 || true; done
    fi
    stop containerd
    local pid
    for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $DIR/containerd/containerd.sock" || true); do
        kill -KILL "$pid" 2>/dev/null || true
    done
    undo_host
    rm -rf "$DIR"/{containerd,kubelet,kubelet-pki,pki,cni-conf,cni-ipam,cdi,pod-logs,volume-plugins,pids,host-before}
    rm -f "$DIR"/*.kubeconfig "$DIR"/*.yaml "$DIR"/*.toml "$DIR/Corefile"
    log "down in $((SECONDS - start_s)) s (logs kept in $DIR/logs)"
}

undo_host() {
    local before=$DIR/host-before m p
    # Mounts under the node's directory (overlay rootfs, shm, volumes), deepest first; then the pods' netns.
    findmnt -rn -o TARGET | { grep "^$DIR/" || true; } | awk '{print length, $0}' | sort -rn | cut -d' ' -f2- |
        while read -r m; do umount "$m" 2>/dev/null || umount -l "$m"; done
    for p in /run/netns/cni-*; do
        [[ -e $p ]] || continue
        grep -qx "$(basename "$p")" "$before/netns" 2>/dev/null && continue
        umount "$p" 2>/dev/null || true
        rm -f "$p"
    done
    ip link delete "$BRIDGE" 2>/dev/null || true
    # iptables: the rules that jump to, and the chains of, the CNI plugins and kube-proxy that were not there.
    local cmd t chain
    iptables_chains | sort >"$DIR/chains-now"
    sort "$before/chains" 2>/dev/null | comm -23 "$DIR/chains-now" - | while read -r cmd t chain; do
        "$cmd-save" -t "$t" | { grep -E "^-A .* -j $chain( |$)" || true; } | sed 's/^-A/-D/' |
            while read -r rule; do eval "$cmd" -t "$t" "$rule" 2>/dev/null || true; done
        "$cmd" -t "$t" -F "$chain" 2>/dev/null || true
    done
    sort "$before/chains" 2>/dev/null | comm -23 "$DIR/chains-now" - | while read -r cmd t chain; do
        "$cmd" -t "$t" -X "$chain" 2>/dev/null || true
    done
    rm -f "$DIR/chains-now"
    # iptables-nft creates its tables (ip/ip6 filter, nat, mangle) on first use: drop those that were not there
    # and hold no rule now.
    local family table
    nft list tables 2>/dev/null | grep "^table" | sort | comm -23 - <(sort "$before/nft-tables" 2>/dev/null) | while read -r _ family table; do
        case $family in ip) cmd=iptables ;; ip6) cmd=ip6tables ;; *) continue ;; esac
        "$cmd-save" -t "$table" 2>/dev/null | grep -q '^-A' || nft delete table "$family" "$table" 2>/dev/null || true
    done
    # The kubelet's cgroups (cgroupfs driver), children first.
    find /sys/fs/cgroup -maxdepth 2 -name 'kubepods*' -type d 2>/dev/null | while read -r m; do
        find "$m" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
    [[ -s $before/sysctl.conf ]] && sysctl -q -p "$before/sysctl.conf" >/dev/null 2>&1 || true
    for p in "${HOST_PATHS[@]}"; do
        [[ -e $p ]] || continue
        grep -qx "$p" "$before/paths" 2>/dev/null && continue
        findmnt -rn -o TARGET | { grep "^$p/" || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
        rm -rf "$p"
    done
}

status() {
    local c ok=0
    for c in "${COMPONENTS[@]}"; do
        if alive "$c"; then echo "$c: running (pid $(<"$(pidfile "$c")"))"; else echo "$c: stopped"; ok=1; fi
    done
    local ready
    ready=$(kubectl get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || true)
    echo "node $NODE: ${ready:-absent}"
    [[ $ready == True ]] || ok=1
    return $ok
}

case ${1:-} in
up) up ;;
down) down ;;
status) status ;;
check) check_host ;;
*) die "usage: $0 up|down|status|check" ;;
esac
