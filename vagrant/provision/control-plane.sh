#!/usr/bin/env bash
# vagrant/provision/control-plane.sh: the control-plane node, after common.sh.
#   1. kubeadm init --skip-phases=addon/kube-proxy (no kube-proxy at any moment);
#   2. the kube-system/kube-proxy ConfigMap ipvs-proxier reads (see below why we write it);
#   3. the ipvs-proxier image: built here from deploy/Dockerfile with podman (or imported
#      from LAB_IMAGE_ARCHIVE), imported into containerd's k8s.io namespace, so the
#      DaemonSet's image is present on the node and nothing is pulled from a registry;
#   4. deploy/rbac.yaml + deploy/daemonset.yaml, unchanged;
#   5. flannel (pinned), told the API server's real address;
#   6. the share the workers join from (join token, CA hash, image archive) over HTTP on the
#      private network;
#   7. optionally MetalLB in L2 mode (LAB_METALLB=1).
#
# Environment (set by the Vagrantfile): NODE_NAME, NODE_IP, LAB_POD_CIDR, LAB_SERVICE_CIDR,
# LAB_FLANNEL_VERSION, LAB_METALLB, LAB_METALLB_VERSION, LAB_METALLB_RANGE, LAB_SHARE_PORT,
# LAB_IMAGE_ARCHIVE (optional, relative to the repository root), LAB_REBUILD_IMAGE (1: build
# again even if an archive exists).
set -euo pipefail

: "${NODE_NAME:?}" "${NODE_IP:?}" "${LAB_POD_CIDR:?}" "${LAB_SERVICE_CIDR:?}"
: "${LAB_FLANNEL_VERSION:?}" "${LAB_METALLB:?}" "${LAB_METALLB_VERSION:?}"
: "${LAB_METALLB_RANGE:?}" "${LAB_SHARE_PORT:?}"
LAB_IMAGE_ARCHIVE=${LAB_IMAGE_ARCHIVE:-}
LAB_REBUILD_IMAGE=${LAB_REBUILD_IMAGE:-0}
export DEBIAN_FRONTEND=noninteractive
export KUBECONFIG=/etc/kubernetes/admin.conf

SRC=/src                        # the repository, rsynced by the Vagrantfile
SHARE=/var/lib/ipvs-lab/share   # what workers fetch
api_server="https://${NODE_IP}:6443"

log() { printf '[control-plane] %s\n' "$*"; }
die() { printf '[control-plane] ERROR: %s\n' "$*" >&2; exit 1; }

# wait_for SECONDS DESCRIPTION CMD...: retries CMD every 5 s until it succeeds.
wait_for() {
    local timeout=$1 what=$2 deadline
    shift 2
    deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "timed out after ${timeout}s waiting for: $what"
        sleep 5
    done
    log "ready: $what"
}

# ---- 1. kubeadm init -------------------------------------------------------------------
if [[ ! -f /etc/kubernetes/admin.conf ]]; then
    k8s_version=$(kubeadm version -o short)
    install -d /etc/kubeadm
    cat >/etc/kubeadm/config.yaml <<CONF
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: ${NODE_IP}
  bindPort: 6443
nodeRegistration:
  name: ${NODE_NAME}
  criSocket: unix:///run/containerd/containerd.sock
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: ${k8s_version}
controlPlaneEndpoint: ${NODE_IP}:6443
networking:
  podSubnet: ${LAB_POD_CIDR}
  serviceSubnet: ${LAB_SERVICE_CIDR}
---
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: systemd
CONF
    log "kubeadm init ${k8s_version} (without the kube-proxy addon)"
    kubeadm init --config /etc/kubeadm/config.yaml --skip-phases=addon/kube-proxy
else
    log "already initialised"
fi
install -d -o vagrant -g vagrant /home/vagrant/.kube
install -m 0600 -o vagrant -g vagrant /etc/kubernetes/admin.conf /home/vagrant/.kube/config
wait_for 300 "API server" kubectl get --raw /readyz

# ---- 2. the kube-proxy ConfigMap -------------------------------------------------------
# deploy/daemonset.yaml reads kubeadm's kube-system/kube-proxy ConfigMap unchanged. kubeadm
# writes that ConfigMap in the addon/kube-proxy phase, the one skipped above, so we write it
# as kubeadm would, with the MetalLB-style edits (mode: ipvs, strictARP: true). Its
# kubeconfig.conf names the API server by its real address: without kube-proxy nothing
# serves the `kubernetes` ClusterIP until ipvs-proxier itself has programmed it.
log "kube-system/kube-proxy ConfigMap (server ${api_server})"
kubectl apply -f - <<CONF
apiVersion: v1
kind: ConfigMap
metadata:
  name: kube-proxy
  namespace: kube-system
  labels:
    app: kube-proxy
data:
  config.conf: |-
    apiVersion: kubeproxy.config.k8s.io/v1alpha1
    kind: KubeProxyConfiguration
    bindAddress: 0.0.0.0
    clientConnection:
      kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
    clusterCIDR: ${LAB_POD_CIDR}
    mode: ipvs
    ipvs:
      strictARP: true
  kubeconfig.conf: |-
    apiVersion: v1
    kind: Config
    clusters:
    - cluster:
        certificate-authority: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt
        server: ${api_server}
      name: default
    contexts:
    - context:
        cluster: default
        namespace: default
        user: default
      name: default
    current-context: default
    users:
    - name: default
      user:
        tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token
CONF

# ---- 3. the ipvs-proxier image ---------------------------------------------------------
# The image name is whatever deploy/daemonset.yaml says (imagePullPolicy: IfNotPresent), so
# the manifest is applied as is and the kubelet finds the image locally.
image=$(awk '$1 == "image:" { print $2; exit }' "$SRC/deploy/daemonset.yaml")
[[ -n "$image" ]] || die "no image: in $SRC/deploy/daemonset.yaml"
install -d "$SHARE"
archive="$SHARE/ipvs-proxier.tar"
if [[ -n "$LAB_IMAGE_ARCHIVE" ]]; then
    log "image from $LAB_IMAGE_ARCHIVE (tagging it $image)"
    [[ -f "$SRC/$LAB_IMAGE_ARCHIVE" ]] || die "LAB_IMAGE_ARCHIVE=$LAB_IMAGE_ARCHIVE is not in the repository"
    apt-get install -y -qq --no-install-recommends podman containernetworking-plugins >/dev/null
    loaded=$(podman load -q -i "$SRC/$LAB_IMAGE_ARCHIVE" | sed -n 's/^Loaded image[^:]*: //p' | head -n1)
    [[ -n "$loaded" ]] || die "podman load found no image in $LAB_IMAGE_ARCHIVE"
    podman tag "$loaded" "$image"
    podman save --format docker-archive -o "$archive.tmp" "$image"
    mv "$archive.tmp" "$archive"
elif [[ ! -s "$archive" || "$LAB_REBUILD_IMAGE" == 1 ]]; then
    log "building $image from deploy/Dockerfile with podman (several minutes: a release cargo build)"
    apt-get install -y -qq --no-install-recommends podman containernetworking-plugins >/dev/null
    # The Dockerfile names its base images by short name (rust:..., debian:...).
    install -d /etc/containers/registries.conf.d
    printf 'unqualified-search-registries = ["docker.io"]\n' \
        >/etc/containers/registries.conf.d/50-ipvs-lab.conf
    # --network host: podman's own bridge network would add NAT rules next to ours.
    podman build --network host -f "$SRC/deploy/Dockerfile" -t "$image" "$SRC"
    podman save --format docker-archive -o "$archive.tmp" "$image"
    mv "$archive.tmp" "$archive"
else
    log "image archive already built ($archive; LAB_REBUILD_IMAGE=1 rebuilds it)"
fi
(cd "$SHARE" && sha256sum ipvs-proxier.tar >ipvs-proxier.tar.sha256)
printf '%s\n' "$image" >"$SHARE/image"
ctr -n k8s.io images import "$archive" >/dev/null
ctr -n k8s.io images ls -q | grep -qxF "$image" || die "$image not in containerd after import"
log "image $image imported into containerd"

# ---- 4. ipvs-proxier -------------------------------------------------------------------
log "ipvs-proxier RBAC and DaemonSet (deploy/, unchanged)"
kubectl apply -f "$SRC/deploy/rbac.yaml"
kubectl apply -f "$SRC/deploy/daemonset.yaml"
# hostNetwork and tolerant of every taint: it runs before any CNI, and it is what makes the
# `kubernetes` ClusterIP (10.96.0.1:443) work for flannel's neighbours and CoreDNS.
wait_for 600 "ipvs-proxier running on ${NODE_NAME}" \
    kubectl -n kube-system rollout status ds/ipvs-proxier --timeout=5s

# ---- 5. flannel ------------------------------------------------------------------------
log "flannel ${LAB_FLANNEL_VERSION}"
flannel_url="https://github.com/flannel-io/flannel/releases/download/${LAB_FLANNEL_VERSION}/kube-flannel.yml"
curl -fsSL "$flannel_url" -o /etc/kubeadm/kube-flannel.yml
grep -q "${LAB_POD_CIDR}" /etc/kubeadm/kube-flannel.yml ||
    die "flannel's manifest does not use ${LAB_POD_CIDR}; set LAB_POD_CIDR to its Network"
kubectl apply -f /etc/kubeadm/kube-flannel.yml
# The CNI does not depend on the proxier under test: it reaches the API server by its real
# address (in-cluster config reads KUBERNETES_SERVICE_HOST/PORT), and it carries pod traffic
# over the private network, not the provider's NAT NIC (the default route's).
kubectl -n kube-flannel set env ds/kube-flannel -c kube-flannel \
    KUBERNETES_SERVICE_HOST="${NODE_IP}" KUBERNETES_SERVICE_PORT=6443
# --iface-can-reach: the interface of the route to that address, the private network's first
# one (the host's side of it on both providers); not a node's, or the control plane would
# pick its loopback.
reach="${NODE_IP%.*}.1"
if ! kubectl -n kube-flannel get ds kube-flannel -o jsonpath='{.spec.template.spec.containers[0].args}' |
    grep -q -- '--iface-can-reach'; then
    kubectl -n kube-flannel patch ds kube-flannel --type=json -p \
        "[{\"op\":\"add\",\"path\":\"/spec/template/spec/containers/0/args/-\",\"value\":\"--iface-can-reach=${reach}\"}]"
fi
wait_for 600 "node ${NODE_NAME} Ready" \
    kubectl wait --for=condition=Ready "node/${NODE_NAME}" --timeout=5s
# CoreDNS reaches the API server through the `kubernetes` ClusterIP, i.e. through us.
wait_for 600 "CoreDNS available (API server reached through ipvs-proxier)" \
    kubectl -n kube-system rollout status deploy/coredns --timeout=5s

# ---- 6. the share workers join from ----------------------------------------------------
log "join share on http://${NODE_IP}:${LAB_SHARE_PORT}/"
apt-get install -y -qq --no-install-recommends python3 >/dev/null
join=$(kubeadm token create --ttl 24h --print-join-command)
token=$(awk '{ for (i = 1; i < NF; i++) if ($i == "--token") print $(i + 1) }' <<<"$join")
ca_hash=$(awk '{ for (i = 1; i < NF; i++) if ($i == "--discovery-token-ca-cert-hash") print $(i + 1) }' <<<"$join")
[[ -n "$token" && -n "$ca_hash" ]] || die "cannot parse: $join"
printf 'endpoint=%s:6443\ntoken=%s\nca_hash=%s\n' "$NODE_IP" "$token" "$ca_hash" >"$SHARE/join.tmp"
mv "$SHARE/join.tmp" "$SHARE/join"
# Private network only (the lab's host-only/libvirt network), not the NAT NIC.
systemctl stop ipvs-lab-share.service >/dev/null 2>&1 || true
systemctl reset-failed ipvs-lab-share.service >/dev/null 2>&1 || true
systemd-run --unit=ipvs-lab-share --property=Restart=always \
    python3 -m http.server "$LAB_SHARE_PORT" --bind "$NODE_IP" --directory "$SHARE" >/dev/null

# ---- 7. MetalLB (optional) -------------------------------------------------------------
if [[ "$LAB_METALLB" == 1 ]]; then
    log "MetalLB ${LAB_METALLB_VERSION}, L2, pool ${LAB_METALLB_RANGE}"
    kubectl apply -f "https://raw.githubusercontent.com/metallb/metallb/${LAB_METALLB_VERSION}/config/manifests/metallb-native.yaml"
    # The controller (and its webhook) may run on the control plane, so the pool can be
    # configured now, before any worker has joined.
    kubectl -n metallb-system patch deploy controller --type=json -p \
        '[{"op":"add","path":"/spec/template/spec/tolerations","value":[{"key":"node-role.kubernetes.io/control-plane","operator":"Exists","effect":"NoSchedule"}]}]'
    wait_for 600 "MetalLB controller available" \
        kubectl -n metallb-system rollout status deploy/controller --timeout=5s
    pool=$(mktemp)
    cat >"$pool" <<CONF
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata:
  name: ipvs-lab
  namespace: metallb-system
spec:
  addresses:
  - ${LAB_METALLB_RANGE}
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata:
  name: ipvs-lab
  namespace: metallb-system
spec:
  ipAddressPools:
  - ipvs-lab
CONF
    # The webhook answers only once its endpoints are programmed (through us, again).
    wait_for 300 "MetalLB pool accepted by its webhook" kubectl apply -f "$pool"
    rm -f "$pool"
fi

log "done: $(kubectl get nodes --no-headers | wc -l) node(s); workers join from the share"
