#!/usr/bin/env bash
# vagrant/provision/worker.sh: a worker node, after common.sh. Waits for the control plane's
# share (http://CP:PORT/, served on the private network by control-plane.sh), imports the
# ipvs-proxier image into containerd's k8s.io namespace (so the DaemonSet pod starts with no
# registry), and joins with the published bootstrap token, pinning the cluster CA by hash.
#
# Environment (set by the Vagrantfile): NODE_NAME, NODE_IP, LAB_CP_IP, LAB_SHARE_PORT,
# LAB_JOIN_WAIT (seconds to wait for the control plane; it builds the image first).
set -euo pipefail

: "${NODE_NAME:?}" "${NODE_IP:?}" "${LAB_CP_IP:?}" "${LAB_SHARE_PORT:?}" "${LAB_JOIN_WAIT:?}"
share="http://${LAB_CP_IP}:${LAB_SHARE_PORT}"
work=/var/lib/ipvs-lab
install -d "$work"

log() { printf '[worker %s] %s\n' "$NODE_NAME" "$*"; }
die() { printf '[worker %s] ERROR: %s\n' "$NODE_NAME" "$*" >&2; exit 1; }

# `vagrant up` may bring workers up in parallel with the control plane (libvirt does).
log "waiting up to ${LAB_JOIN_WAIT}s for $share/join"
deadline=$((SECONDS + LAB_JOIN_WAIT))
until curl -fsS --max-time 10 "$share/join" -o "$work/join" 2>/dev/null; do
    ((SECONDS < deadline)) || die "no join share at $share after ${LAB_JOIN_WAIT}s (is the control plane provisioned?)"
    sleep 10
done

# join is "key=value" lines; read, never sourced.
field() { sed -n "s/^$1=//p" "$work/join"; }
endpoint=$(field endpoint)
token=$(field token)
ca_hash=$(field ca_hash)
[[ "$endpoint" =~ ^[0-9.]+:[0-9]+$ ]] || die "bad endpoint in join share: $endpoint"
[[ "$token" =~ ^[a-z0-9]{6}\.[a-z0-9]{16}$ ]] || die "bad token in join share"
[[ "$ca_hash" =~ ^sha256:[0-9a-f]{64}$ ]] || die "bad CA hash in join share"

log "ipvs-proxier image from the control plane"
curl -fsS "$share/ipvs-proxier.tar" -o "$work/ipvs-proxier.tar"
curl -fsS "$share/ipvs-proxier.tar.sha256" -o "$work/ipvs-proxier.tar.sha256"
curl -fsS "$share/image" -o "$work/image"
(cd "$work" && sha256sum --quiet -c ipvs-proxier.tar.sha256) || die "image archive checksum mismatch"
image=$(cat "$work/image")
ctr -n k8s.io images import "$work/ipvs-proxier.tar" >/dev/null
ctr -n k8s.io images ls -q | grep -qxF "$image" || die "$image not in containerd after import"
log "image $image imported"

if [[ -f /etc/kubernetes/kubelet.conf ]]; then
    log "already joined"
else
    log "kubeadm join $endpoint"
    kubeadm join "$endpoint" --token "$token" --discovery-token-ca-cert-hash "$ca_hash" \
        --node-name "$NODE_NAME"
fi
log "done"
