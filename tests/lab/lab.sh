# shellcheck shell=bash
# tests/lab/lab.sh — sourced library for the ipvs-proxier QEMU lab.
#
# The host kernel has no IPVS and no dummy driver, so kernel behaviour is tested in a QEMU TCG
# guest that boots Debian's kernel and runs host binaries from the host root, shared read-only
# over 9p. See tests/lab/README.md.
#
# Public functions (everything else is internal and prefixed with `_lab_`):
#   lab_setup                  prerequisites + kernel + initramfs; sets LAB_KVER LAB_VMLINUZ LAB_INITRD
#   lab_node_dir NAME          creates a fresh per-run share directory for node NAME, prints it
#   lab_write_job DIR CWD CMD…  writes the job script the guest runs (argv kept exactly)
#   lab_boot NAME DIR TIMEOUT [QEMU_ARGS…]
#                              boots one guest in the background; sets LAB_BOOT_PID
#   lab_wait NAME DIR          waits for that guest, streams nothing; returns the job's status
#   lab_run_job DIR TIMEOUT [QEMU_ARGS…]
#                              boot node0 + stream output + wait: the single-node path
#
# Never give a guest a user-mode (slirp) NIC: every boot passes `-nic none`; extra NICs for a
# multi-node lab must be QEMU socket/stream netdevs between guests only.

# Guard against double sourcing.
if [[ -n "${_LAB_SH_LOADED:-}" ]]; then
    return 0
fi
_LAB_SH_LOADED=1

LAB_DIR_HOST="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LAB_CACHE="${LAB_CACHE:-${HOME:-/root}/.cache/ipvs-proxier/lab}"

# Where the results share is mounted inside the guest chroot (on a tmpfs, the host root is
# read-only) and where tests drop files that must come back to the host.
LAB_GUEST_SHARE=/run/lab
LAB_GUEST_ARTIFACTS=/run/lab/artifacts

# Debian packages the lab needs, and a command that proves each one is installed.
_LAB_PACKAGES=(
    "qemu-system-x86:qemu-system-x86_64"
    "busybox-static:"
    "kmod:modprobe"
    "cpio:cpio"
    "ipvsadm:ipvsadm"
    "ipset:ipset"
    "iptables:iptables"
    "iproute2:ip"
    "curl:curl"
    "strace:strace"
    "conntrack:conntrack"
    "python3-minimal:python3"
    # Not for the guest: jemalloc (the daemon's allocator) is built from source with make.
    "make:make"
)

lab_log() { printf 'lab: %s\n' "$*" >&2; }
lab_warn() { printf 'lab: warning: %s\n' "$*" >&2; }
lab_die() {
    printf 'lab: error: %s\n' "$*" >&2
    exit 1
}

_lab_have() { command -v "$1" >/dev/null 2>&1; }

# A package counts as present when its marker command is on PATH (or in sbin, which a non-root
# PATH often lacks). busybox must be the static build: the initramfs has no libc.
_lab_pkg_missing() {
    local pkg=${1%%:*} cmd=${1#*:}
    if [[ "$pkg" == busybox-static ]]; then
        [[ -x /bin/busybox ]] || return 0
        if _lab_have ldd && ldd /bin/busybox >/dev/null 2>&1; then
            return 0 # dynamically linked: the busybox package, not busybox-static
        fi
        return 1
    fi
    if _lab_have "$cmd" || [[ -x "/usr/sbin/$cmd" || -x "/sbin/$cmd" ]]; then
        return 1
    fi
    return 0
}

_LAB_APT_UPDATED=0
_lab_apt_update_once() {
    if [[ "$_LAB_APT_UPDATED" == 0 ]]; then
        lab_log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        _LAB_APT_UPDATED=1
    fi
}

lab_ensure_packages() {
    local missing=() entry
    for entry in "${_LAB_PACKAGES[@]}"; do
        if _lab_pkg_missing "$entry"; then
            missing+=("${entry%%:*}")
        fi
    done
    if ((${#missing[@]} == 0)); then
        return 0
    fi
    if [[ "$(id -u)" != 0 ]] || ! _lab_have apt-get; then
        lab_log "missing Debian packages: ${missing[*]}"
        lab_log "install them with: sudo apt-get update && sudo apt-get install -y ${missing[*]}"
        return 1
    fi
    _lab_apt_update_once
    lab_log "apt-get install -y ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    for entry in "${_LAB_PACKAGES[@]}"; do
        if _lab_pkg_missing "$entry"; then
            lab_die "package ${entry%%:*} still missing after apt-get install"
        fi
    done
}

_lab_modprobe() { if _lab_have modprobe; then modprobe "$@"; else /usr/sbin/modprobe "$@"; fi; }
_lab_depmod() { if _lab_have depmod; then depmod "$@"; else /usr/sbin/depmod "$@"; fi; }

# Prints the linux-image-6.1.0-NN-amd64 package the linux-image-amd64 metapackage points to.
_lab_resolve_kernel_pkg() {
    local meta_dir=$1 deps="" deb
    if [[ -n "${LAB_KERNEL_PKG:-}" ]]; then
        printf '%s\n' "$LAB_KERNEL_PKG"
        return 0
    fi
    if ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then
        if [[ "$(id -u)" == 0 ]]; then
            _lab_apt_update_once
        else
            lab_warn "apt-cache knows no linux-image-amd64 (run 'apt-get update' as root)"
        fi
    fi
    # The metapackage's candidate version is known offline; what it depends on is resolved once
    # per version and remembered, so a cached lab needs no network at all.
    local meta_ver memo
    meta_ver=$(apt-cache policy linux-image-amd64 2>/dev/null | sed -n 's/^ *Candidate: //p')
    memo="$meta_dir/linux-image-amd64_${meta_ver:-unknown}.depends"
    if [[ -n "$meta_ver" && "$meta_ver" != "(none)" && -s "$memo" ]]; then
        cat "$memo"
        return 0
    fi
    mkdir -p "$meta_dir"
    # Download the metapackage and read its Depends: that is the exact kernel package.
    rm -f "$meta_dir"/linux-image-amd64_*.deb
    if (cd "$meta_dir" && apt-get download -qq linux-image-amd64 >&2 2>/dev/null); then
        for deb in "$meta_dir"/linux-image-amd64_*.deb; do
            deps=$(dpkg-deb -f "$deb" Depends)
        done
        rm -f "$meta_dir"/linux-image-amd64_*.deb
    fi
    if [[ -z "$deps" ]]; then
        deps=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: //p')
    fi
    deps=$(grep -oE 'linux-image-[0-9][^ ,()]*-amd64' <<<"$deps" | grep -v unsigned | head -n1) || true
    if [[ -n "$deps" && -n "$meta_ver" && "$meta_ver" != "(none)" ]]; then
        printf '%s\n' "$deps" >"$memo"
    fi
    printf '%s\n' "$deps"
}

# Sets LAB_KVER LAB_KROOT LAB_VMLINUZ, downloading and unpacking the kernel when not cached.
lab_fetch_kernel() {
    local pkg kver kdir tmp deb
    if [[ -n "${LAB_KVER:-}" && -f "$LAB_CACHE/kernel/${LAB_KVER}/ready" ]]; then
        pkg="linux-image-${LAB_KVER}"
    else
        pkg=$(_lab_resolve_kernel_pkg "$LAB_CACHE/meta") || true
    fi
    if [[ -z "$pkg" ]]; then
        # Offline: fall back to the newest kernel already in the cache.
        kver=$(find "$LAB_CACHE/kernel" -mindepth 2 -maxdepth 2 -name ready -printf '%h\n' 2>/dev/null |
            xargs -r -n1 basename | sort -V | tail -n1)
        [[ -n "$kver" ]] || lab_die "cannot resolve Debian's linux-image-amd64 dependency and no cached kernel in $LAB_CACHE/kernel"
        lab_warn "could not resolve linux-image-amd64; using cached kernel $kver"
        pkg="linux-image-$kver"
    fi
    kver=${pkg#linux-image-}
    kdir="$LAB_CACHE/kernel/$kver"
    if [[ ! -f "$kdir/ready" ]]; then
        lab_log "fetching kernel package $pkg into $kdir"
        tmp=$(mktemp -d "$LAB_CACHE/tmp.kernel.XXXXXX")
        (cd "$tmp" && apt-get download -qq "$pkg" >&2 2>/dev/null) ||
            (cd "$tmp" && apt-get download "$pkg" >&2) ||
            lab_die "apt-get download $pkg failed"
        deb=$(find "$tmp" -maxdepth 1 -name "${pkg}_*.deb" | head -n1)
        [[ -n "$deb" ]] || lab_die "apt-get download $pkg produced no .deb"
        mkdir -p "$tmp/root"
        dpkg-deb -x "$deb" "$tmp/root"
        [[ -d "$tmp/root/lib/modules/$kver" ]] || lab_die "$pkg has no lib/modules/$kver"
        _lab_depmod -b "$tmp/root" "$kver"
        rm -f "$deb"
        rm -rf "$kdir"
        mkdir -p "$(dirname "$kdir")"
        mv "$tmp/root" "$kdir"
        rmdir "$tmp"
        touch "$kdir/ready"
    fi
    LAB_KVER=$kver
    LAB_KROOT=$kdir
    LAB_VMLINUZ="$kdir/boot/vmlinuz-$kver"
    [[ -f "$LAB_VMLINUZ" ]] || lab_die "no $LAB_VMLINUZ in the kernel package"
}

# The modules the guest loads, in this order (dependencies are added in front of each).
# crc32c_generic first: libcrc32c needs it (soft dependency) and ip_vs/nf_nat need libcrc32c.
_lab_wanted_modules() {
    local ko name
    printf '%s\n' crc32c_generic virtio_pci 9pnet_virtio 9p virtio_net
    printf '%s\n' ip_vs
    # Every IPVS scheduler this kernel ships (not the ftp/sip application helpers).
    for ko in "$LAB_KROOT/lib/modules/$LAB_KVER"/kernel/net/netfilter/ipvs/ip_vs_*.ko*; do
        [[ -e "$ko" ]] || continue
        name=$(basename "$ko")
        name=${name%%.ko*}
        case "$name" in
        ip_vs_ftp | ip_vs_pe_* | ip_vs) ;;
        *) printf '%s\n' "$name" ;;
        esac
    done
    printf '%s\n' dummy veth bridge br_netfilter nlmon \
        xt_set ip_set_hash_ip ip_set_hash_ipport ip_set_hash_ipportip ip_set_hash_ipportnet \
        ip_set_bitmap_port ip_set_hash_net \
        ip_tables iptable_nat iptable_filter ip6_tables ip6table_nat ip6table_filter \
        xt_MASQUERADE xt_comment xt_mark xt_addrtype xt_conntrack xt_ipvs xt_nat \
        xt_physdev xt_multiport ipt_REJECT ip6t_REJECT \
        nf_tables nft_compat nft_chain_nat nft_ct nft_reject_inet \
        nf_conntrack_netlink \
        sctp ipip ip_tunnel fou ip_gre gre
}

# Prints the ordered, de-duplicated list of .ko paths (relative to the kernel root) to load.
_lab_module_closure() {
    local mod line path
    declare -A seen=()
    while read -r mod; do
        if ! out=$(_lab_modprobe -d "$LAB_KROOT" -S "$LAB_KVER" --show-depends "$mod" 2>/dev/null); then
            lab_warn "module $mod does not exist in kernel $LAB_KVER: skipped"
            continue
        fi
        while read -r line; do
            case "$line" in
            insmod\ *)
                path=${line#insmod }
                path=${path%% *}
                path=${path#"$LAB_KROOT"/}
                path=${path#/}
                if [[ -z "${seen[$path]:-}" ]]; then
                    seen[$path]=1
                    printf '%s\n' "$path"
                fi
                ;;
            esac
        done <<<"$out"
    done < <(_lab_wanted_modules)
}

# Sets LAB_INITRD, building the initramfs when the init script or module list changed.
lab_build_initramfs() {
    local wanted modlist hash out tmp path i
    # Key: kernel, wanted modules, init script, busybox and this file (the closure logic).
    # Computing the closure (one modprobe per module) is only needed when the key is new.
    wanted=$(_lab_wanted_modules)
    hash=$( {
        printf '%s\n' "$LAB_KVER" "$wanted"
        cat "$LAB_DIR_HOST/guest-init" "${BASH_SOURCE[0]}"
        sha256sum /bin/busybox
    } | sha256sum | cut -c1-16)
    out="$LAB_CACHE/initrd/initrd-$LAB_KVER-$hash.cpio.gz"
    if [[ ! -f "$out" ]]; then
        lab_log "building initramfs $out"
        modlist=$(_lab_module_closure)
        mkdir -p "$LAB_CACHE/initrd"
        tmp=$(mktemp -d "$LAB_CACHE/tmp.initrd.XXXXXX")
        mkdir -p "$tmp/root/bin" "$tmp/root/sbin" "$tmp/root/lib/modules" "$tmp/root/proc" \
            "$tmp/root/sys" "$tmp/root/dev" "$tmp/root/newroot" "$tmp/root/share" "$tmp/root/tmp"
        cp /bin/busybox "$tmp/root/bin/busybox"
        install -m 0755 "$LAB_DIR_HOST/guest-init" "$tmp/root/init"
        i=0
        : >"$tmp/root/lib/modules/load.list"
        while read -r path; do
            [[ -n "$path" ]] || continue
            i=$((i + 1))
            # Flat names keep the load order explicit and the init script trivial.
            cp "$LAB_KROOT/$path" "$tmp/root/lib/modules/$(printf '%03d' "$i")-$(basename "$path")"
            printf '%03d-%s\n' "$i" "$(basename "$path")" >>"$tmp/root/lib/modules/load.list"
        done <<<"$modlist"
        (cd "$tmp/root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) |
            gzip -1 >"$tmp/initrd.cpio.gz"
        sed 's#.*/##; s#\.ko.*##' <<<"$modlist" >"$out.modules"
        mv "$tmp/initrd.cpio.gz" "$out"
        rm -rf "$tmp"
        # Old initramfs images for this kernel are garbage now.
        find "$LAB_CACHE/initrd" -name "initrd-$LAB_KVER-*.cpio.gz*" ! -name "$(basename "$out")*" \
            -mmin +60 -delete 2>/dev/null || true
    fi
    LAB_INITRD=$out
    # shellcheck disable=SC2034 # read by the scripts that source this file
    LAB_MODULES=$(tr '\n' ' ' <"$out.modules" 2>/dev/null || true)
}

# Everything a boot needs. Serialised with a lock: several runs may start at once.
lab_setup() {
    lab_ensure_packages || exit 1
    mkdir -p "$LAB_CACHE"
    exec {_lab_lock_fd}>"$LAB_CACHE/.lock"
    flock "$_lab_lock_fd"
    lab_fetch_kernel
    lab_build_initramfs
    flock -u "$_lab_lock_fd"
    exec {_lab_lock_fd}>&-
}

# lab_guest_visible PATH: true when the guest sees the host's PATH (the guest mounts fresh
# tmpfs over /tmp, /run, /var/tmp and its own /proc /sys /dev).
lab_guest_visible() {
    case "$1" in
    /tmp | /tmp/* | /run | /run/* | /var/tmp | /var/tmp/* | /proc/* | /sys/* | /dev/*) return 1 ;;
    *) return 0 ;;
    esac
}

# Quotes one word for a POSIX shell.
_lab_shquote() {
    local s=${1//\'/\'\\\'\'}
    printf "'%s'" "$s"
}

# lab_node_dir NAME: a fresh writable share for one guest, printed on stdout.
lab_node_dir() {
    local name=$1 dir
    dir=$(mktemp -d "${TMPDIR:-/tmp}/ipvs-lab-$name.XXXXXX")
    mkdir -p "$dir/artifacts"
    chmod 0777 "$dir" "$dir/artifacts"
    printf '%s\n' "$dir"
}

# Environment variables forwarded from the host into the job (besides PATH and HOME).
_LAB_PASS_ENV=(RUST_BACKTRACE RUST_LOG RUST_TEST_THREADS RUST_MIN_STACK RUST_LIB_BACKTRACE
    CARGO_TARGET_DIR USER LOGNAME LANG LC_ALL TERM NO_COLOR CLICOLOR_FORCE)

# lab_write_job DIR CWD CMD [ARGS…]: the script the guest runs inside the chroot.
lab_write_job() {
    local dir=$1 cwd=$2 var cmdline="" arg
    shift 2
    for arg in "$@"; do
        cmdline+="$(_lab_shquote "$arg") "
    done
    {
        printf '# generated by tests/lab/lab.sh\n'
        printf 'export PATH=%s\n' "$(_lab_shquote "${PATH:-/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin}")"
        printf 'export HOME=%s\n' "$(_lab_shquote "${HOME:-/root}")"
        for var in "${_LAB_PASS_ENV[@]}" ${LAB_PASS_ENV:-}; do
            if [[ -n "${!var+x}" ]]; then
                printf 'export %s=%s\n' "$var" "$(_lab_shquote "${!var}")"
            fi
        done
        printf 'export IPVS_PROXIER_LAB=1\n'
        printf 'export LAB_SHARE=%s\n' "$LAB_GUEST_SHARE"
        printf 'export LAB_ARTIFACTS=%s\n' "$LAB_GUEST_ARTIFACTS"
        printf 'export TMPDIR=/tmp\n'
        printf 'cd %s || exit 125\n' "$(_lab_shquote "$cwd")"
        printf 'exec sh -c %s\n' "$(_lab_shquote "exec $cmdline")"
    } >"$dir/job.sh"
}

# lab_node_mac INDEX [NIC]: a stable, locally administered MAC for NIC (default 0) of node
# INDEX, for the `-device virtio-net-pci,…,mac=` of a multi-node lab.
lab_node_mac() {
    printf '52:54:00:1a:%02x:%02x\n' "$1" "${2:-0}"
}

# lab_boot NAME DIR TIMEOUT [EXTRA_QEMU_ARGS…]: starts a guest in the background.
# NAME is the node name (hostname in the guest); EXTRA_QEMU_ARGS are for a multi-node lab
# (`-netdev socket,id=n0,listen=127.0.0.1:PORT -device virtio-net-pci,netdev=n0,mac=…`).
# Sets LAB_BOOT_PID. The guest's console goes to DIR/console.log.
lab_boot() {
    local name=$1 dir=$2 timeout=$3
    shift 3
    [[ -n "${LAB_VMLINUZ:-}" && -n "${LAB_INITRD:-}" ]] || lab_die "lab_boot before lab_setup"
    local arg
    for arg in "$@"; do
        case "$arg" in
        *user,* | user | *slirp* | *hostfwd*) lab_die "refusing user-mode networking ($arg): lab traffic must stay inside the lab" ;;
        esac
    done
    : >"$dir/console.log"
    date +%s.%N >"$dir/boot.start"
    timeout -k 10 "$timeout" qemu-system-x86_64 \
        -name "ipvs-lab-$name" \
        -accel tcg -cpu max \
        -smp "${LAB_CPUS:-2}" -m "${LAB_MEM:-1024}" \
        -nographic -no-reboot -nodefaults \
        -nic none \
        -monitor none -parallel none \
        -serial "file:$dir/console.log" \
        -kernel "$LAB_VMLINUZ" -initrd "$LAB_INITRD" \
        -append "console=ttyS0 quiet loglevel=3 panic=-1 lab.node=$name lab.share=$LAB_GUEST_SHARE ${LAB_APPEND:-}" \
        -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
        -virtfs "local,path=$dir,mount_tag=labshare,security_model=none,multidevs=remap" \
        "$@" </dev/null >"$dir/qemu.out" 2>&1 &
    LAB_BOOT_PID=$!
}

# lab_wait NAME DIR PID: waits for the guest; returns the job's exit status, or 125 (with a
# message and the end of the serial console) when the guest died, timed out or never reported.
lab_wait() {
    local name=$1 dir=$2 pid=$3 qrc=0 rc
    wait "$pid" || qrc=$?
    rc=""
    if [[ -s "$dir/rc" ]]; then
        rc=$(tr -dc '0-9' <"$dir/rc")
    fi
    if [[ -z "$rc" ]]; then
        # Fallback: the init script also prints the status on the serial console.
        rc=$(sed -n 's/.*LAB-EXIT-CODE=\([0-9]*\).*/\1/p' "$dir/console.log" | tail -n1)
    fi
    if [[ -n "$rc" ]]; then
        return "$rc"
    fi
    if ((qrc == 124 || qrc == 137)); then
        printf 'lab: error: guest %s timed out (no exit status reported)\n' "$name" >&2
    else
        printf 'lab: error: guest %s died without reporting an exit status (qemu exit %s)\n' "$name" "$qrc" >&2
    fi
    if [[ -s "$dir/qemu.out" ]]; then
        printf 'lab: qemu said:\n' >&2
        tail -n 20 "$dir/qemu.out" >&2
    fi
    printf 'lab: last lines of the serial console (%s):\n' "$dir/console.log" >&2
    # Strip the firmware's terminal escape sequences; indent so it stands out.
    tail -n 40 "$dir/console.log" | sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g; s/^/  | /' >&2
    return 125
}

# lab_stream DIR PID: copies the job's stdout/stderr to ours while the guest runs.
# The guest writes them straight into the 9p share, so they reach the host as they happen.
lab_stream() {
    local dir=$1 pid=$2
    : >>"$dir/stdout"
    : >>"$dir/stderr"
    tail -q -n +1 -s 0.2 --pid="$pid" -f "$dir/stdout" &
    _LAB_TAIL_OUT=$!
    tail -q -n +1 -s 0.2 --pid="$pid" -f "$dir/stderr" >&2 &
    _LAB_TAIL_ERR=$!
    if [[ -n "${LAB_CONSOLE:-}" ]]; then
        # Debugging aid: the guest's serial console too, prefixed.
        tail -q -n +1 -s 0.2 --pid="$pid" -f "$dir/console.log" | sed -u 's/^/console| /' >&2 &
    fi
}

lab_stream_end() {
    wait "${_LAB_TAIL_OUT:-}" 2>/dev/null || true
    wait "${_LAB_TAIL_ERR:-}" 2>/dev/null || true
}

# lab_collect_artifacts DIR: hands the files tests wrote to $LAB_ARTIFACTS back to the user.
lab_collect_artifacts() {
    local dir=$1
    if [[ -z "$(ls -A "$dir/artifacts" 2>/dev/null)" ]]; then
        return 0
    fi
    if [[ -n "${LAB_ARTIFACTS_OUT:-}" ]]; then
        mkdir -p "$LAB_ARTIFACTS_OUT"
        cp -a "$dir/artifacts/." "$LAB_ARTIFACTS_OUT/"
        lab_log "artifacts copied to $LAB_ARTIFACTS_OUT"
    else
        local keep
        keep=$(mktemp -d "${TMPDIR:-/tmp}/ipvs-lab-artifacts.XXXXXX")
        cp -a "$dir/artifacts/." "$keep/"
        lab_log "artifacts are in $keep (set LAB_ARTIFACTS_OUT to choose the directory)"
    fi
}

# lab_run_job DIR TIMEOUT [EXTRA_QEMU_ARGS…]: one guest, output streamed; returns its status.
lab_run_job() {
    local dir=$1 timeout=$2 rc=0 start end
    shift 2
    start=$(date +%s.%N)
    lab_boot node0 "$dir" "$timeout" "$@"
    _LAB_QEMU_PID=$LAB_BOOT_PID
    lab_stream "$dir" "$LAB_BOOT_PID"
    lab_wait node0 "$dir" "$LAB_BOOT_PID" || rc=$?
    _LAB_QEMU_PID=""
    lab_stream_end
    end=$(date +%s.%N)
    if [[ -n "${LAB_VERBOSE:-}" ]]; then
        lab_log "guest run took $(awk -v a="$start" -v b="$end" 'BEGIN{printf "%.1f", b-a}') s" \
            "(ready after $(cat "$dir/boot.time" 2>/dev/null || echo '?') s of guest uptime)"
    fi
    lab_collect_artifacts "$dir"
    return "$rc"
}

# Cleanup for scripts that call lab_run_job: kill a still-running guest, drop the share.
lab_cleanup() {
    if [[ -n "${_LAB_QEMU_PID:-}" ]]; then
        kill "$_LAB_QEMU_PID" 2>/dev/null || true
    fi
    if [[ -n "${_LAB_TAIL_OUT:-}" ]]; then kill "$_LAB_TAIL_OUT" 2>/dev/null || true; fi
    if [[ -n "${_LAB_TAIL_ERR:-}" ]]; then kill "$_LAB_TAIL_ERR" 2>/dev/null || true; fi
    if [[ -n "${LAB_RUN_DIR:-}" && -d "$LAB_RUN_DIR" ]]; then
        if [[ -n "${LAB_KEEP:-}" ]]; then
            lab_log "run directory kept: $LAB_RUN_DIR"
        else
            rm -rf "$LAB_RUN_DIR"
        fi
    fi
}
