#!/usr/bin/env bash
# vagrant/provision/common.sh: every node (control plane and workers). Kernel settings
# kubeadm checks, containerd, kubelet/kubeadm/kubectl from the pinned pkgs.k8s.io minor, the
# node's private address as kubelet --node-ip, and the tools `vagrant/verify` runs on nodes
# (ipvsadm, ipset, curl). Idempotent: `vagrant provision` runs it again harmlessly.
#
# Environment (set by the Vagrantfile): NODE_NAME, NODE_IP, LAB_HOSTS ("ip name ..."),
# LAB_K8S_MINOR (e.g. v1.34).
set -euo pipefail

: "${NODE_NAME:?}" "${NODE_IP:?}" "${LAB_HOSTS:?}" "${LAB_K8S_MINOR:?}"
export DEBIAN_FRONTEND=noninteractive

log() { printf '[common %s] %s\n' "$NODE_NAME" "$*"; }

# Name resolution between nodes without DNS; kubelet itself is pinned to NODE_IP below.
log "hosts"
sed -i '/# ipvs-lab$/d' /etc/hosts
read -r -a hosts <<<"$LAB_HOSTS"
for ((i = 0; i + 1 < ${#hosts[@]}; i += 2)); do
    printf '%s %s # ipvs-lab\n' "${hosts[i]}" "${hosts[i + 1]}" >>/etc/hosts
done
# Debian maps the hostname to 127.0.1.1, which kubeadm would otherwise take as the node's.
sed -i "/^127\.0\.1\.1[[:space:]].*\b${NODE_NAME}\b/d" /etc/hosts

log "swap off, kernel modules and sysctls kubeadm checks"
swapoff -a
sed -i '/[[:space:]]swap[[:space:]]/ s/^[^#]/#&/' /etc/fstab
# ip_vs is NOT preloaded on purpose: ipvs-proxier has no SYS_MODULE and relies on the
# kernel loading ip_vs, its schedulers and the ipset types on first use; the lab proves it.
cat >/etc/modules-load.d/ipvs-lab.conf <<'CONF'
overlay
br_netfilter
CONF
modprobe overlay
modprobe br_netfilter
cat >/etc/sysctl.d/90-ipvs-lab.conf <<'CONF'
net.ipv4.ip_forward = 1
net.bridge.bridge-nf-call-iptables = 1
net.bridge.bridge-nf-call-ip6tables = 1
CONF
sysctl --system >/dev/null

log "packages"
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    ca-certificates curl gpg apt-transport-https \
    containerd runc iptables ipset ipvsadm conntrack socat ethtool ebtables jq >/dev/null

log "Kubernetes ${LAB_K8S_MINOR} from pkgs.k8s.io"
install -d -m 0755 /etc/apt/keyrings
keyring=/etc/apt/keyrings/kubernetes-apt-keyring.gpg
repo="https://pkgs.k8s.io/core:/stable:/${LAB_K8S_MINOR}/deb/"
curl -fsSL "${repo}Release.key" | gpg --dearmor --yes -o "$keyring"
printf 'deb [signed-by=%s] %s /\n' "$keyring" "$repo" >/etc/apt/sources.list.d/kubernetes.list
apt-get update -qq
apt-mark unhold kubelet kubeadm kubectl >/dev/null 2>&1 || true
apt-get install -y -qq --no-install-recommends kubelet kubeadm kubectl cri-tools kubernetes-cni >/dev/null
apt-mark hold kubelet kubeadm kubectl >/dev/null

log "containerd: systemd cgroups, kubeadm's pause image"
k8s_version=$(kubeadm version -o short)
pause_image=$(kubeadm config images list --kubernetes-version "$k8s_version" 2>/dev/null | grep '/pause:')
install -d /etc/containerd
containerd config default >/etc/containerd/config.toml
# CNI plugins: kubernetes-cni installs them, and flannel its own, in /opt/cni/bin (Debian's
# containerd may default to /usr/lib/cni).
sed -i -e 's/SystemdCgroup = false/SystemdCgroup = true/' \
    -e "s|sandbox_image = \".*\"|sandbox_image = \"${pause_image}\"|" \
    -e 's|bin_dir = ".*"|bin_dir = "/opt/cni/bin"|' /etc/containerd/config.toml
grep -q 'SystemdCgroup = true' /etc/containerd/config.toml
systemctl restart containerd
systemctl enable containerd >/dev/null
cat >/etc/crictl.yaml <<'CONF'
runtime-endpoint: unix:///run/containerd/containerd.sock
image-endpoint: unix:///run/containerd/containerd.sock
CONF

log "kubelet --node-ip=${NODE_IP}"
# The box's first NIC is the provider's NAT/management network (the same 10.0.2.15 on every
# VirtualBox VM): without this, every node would register that address.
printf 'KUBELET_EXTRA_ARGS=--node-ip=%s\n' "$NODE_IP" >/etc/default/kubelet
systemctl enable kubelet >/dev/null
systemctl restart kubelet || true   # crash-loops until kubeadm init/join writes its config

log "done (${k8s_version})"
