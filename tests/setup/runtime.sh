#!/usr/bin/env bash
# Builds the container runtime layer for the real kubelet on minions in
# tests/tests/kubernetes_ha.rs: Debian's containerd, runc and CNI plugins installed over the
# cached rootfs (nspawn.sh) as an overlay layer of its own, plus two local container images,
# since no registry can be reached here.
#
# Output, cached under ${BERTH_CACHE:-/var/cache/berth}/node-runtime-bookworm/:
#   layer/               the overlay upper directory of `dpkg -i` over rootfs-bookworm: a
#                        container mounts it as lowerdir=layer:rootfs-bookworm
#   images/pause.tar     the pod sandbox image `localhost/pause:local` (busybox `sleep`)
#   images/httpd.tar     `localhost/httpd:local`: busybox `httpd -f -p 8080 -h /www`, serving
#                        /www/index.html ("berth pod"); both docker-archive tars that
#                        `ctr -n k8s.io images import` reads
# It is marked complete with this script's checksum and the rootfs's recipe, so a change of
# either rebuilds it (about 10 s).
#
# Installing part: python3 (apt-get, dpkg-deb, findmnt and systemd-nspawn come with Debian and
# nspawn.sh). Building part: `apt-get download` of the packages from this machine's own apt
# sources (a bookworm machine, as the rootfs is bookworm), `dpkg -i` in a non-booted
# `systemd-nspawn` over an overlay of the rootfs; built beside the old cache and swapped in only
# when complete, under a lock.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

CACHE="${BERTH_CACHE:-/var/cache/berth}"
ROOTFS="$CACHE/rootfs-bookworm"
OUT="$CACHE/node-runtime-bookworm"
STAMP="$OUT/.berth-runtime-complete"
# containerd, runc and the CNI plugins, with what iptables needs (the bridge plugin and the
# kubelet call it; netbase, or iptables stays unconfigured). busybox-static, for the images, is
# downloaded beside them and never installed.
PACKAGES=(containerd runc containernetworking-plugins iptables libnftnl11 libnetfilter-conntrack3
    libnfnetlink0 libip6tc2 netbase)

install_part() {
    local need=()
    command -v python3 >/dev/null 2>&1 || need+=(python3)
    berth_apt_install "${need[@]}"
}

# A docker-archive image: one layer of `layer_dir`, tagged `tag`, with `entrypoint` (JSON), for
# `arch` (Debian's and OCI's names agree for amd64 and arm64).
_image() {
    python3 - "$@" <<'PY'
import hashlib, io, json, os, sys, tarfile
layer_dir, tag, entrypoint, arch, out = sys.argv[1:6]
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
    for root, dirs, files in os.walk(layer_dir):
        dirs.sort()
        for name in sorted(dirs) + sorted(files):
            path = os.path.join(root, name)
            info = t.gettarinfo(path, os.path.relpath(path, layer_dir))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            if info.isfile():
                with open(path, "rb") as f:
                    t.addfile(info, f)
            else:
                t.addfile(info)
layer = buf.getvalue()
diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
config = json.dumps({
    "architecture": arch, "os": "linux",
    "config": {"Entrypoint": json.loads(entrypoint), "WorkingDir": "/"},
    "rootfs": {"type": "layers", "diff_ids": [diff_id]},
}, sort_keys=True).encode()
config_name = hashlib.sha256(config).hexdigest() + ".json"
manifest = json.dumps([{"Config": config_name, "RepoTags": [tag], "Layers": ["layer.tar"]}]).encode()
with tarfile.open(out, mode="w", format=tarfile.PAX_FORMAT) as t:
    for name, data in (("manifest.json", manifest), (config_name, config), ("layer.tar", layer)):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
PY
}

build_part() {
    [[ -f "$ROOTFS/.berth-rootfs-complete" ]] ||
        berth_die "$ROOTFS is missing: run tests/setup/nspawn.sh first"
    [[ "$(berth_codename)" == bookworm ]] ||
        berth_die "the packages are downloaded from this machine's apt sources into the bookworm rootfs, but this machine runs $(berth_codename): run the suite on Debian 12 (bookworm)"
    mkdir -p "$CACHE"
    # One build at a time (tests/run and a manual run would remove each other's work).
    exec 9>"$CACHE/.node-runtime.lock"
    flock 9
    local recipe
    recipe="$(sha256sum "$0" | cut -d' ' -f1) $(cat "$ROOTFS/.berth-rootfs-complete")"
    if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$recipe" ]]; then
        return 0
    fi
    berth_say "building $OUT (containerd, runc, CNI plugins over the rootfs; local images)"
    berth_apt_update
    local tmp="$OUT.tmp" arch
    arch="$(dpkg --print-architecture)"
    if mountpoint -q "$tmp/root" 2>/dev/null; then umount -l "$tmp/root"; fi
    rm -rf "$tmp"
    mkdir -p "$tmp"/{debs,layer,work,root,images,busybox}
    (cd "$tmp/debs" && apt-get -q -o APT::Sandbox::User=root download "${PACKAGES[@]}" busybox-static)

    trap 'umount -l "'"$tmp"'/root" 2>/dev/null || true' EXIT
    mount -t overlay overlay -o "lowerdir=$ROOTFS,upperdir=$tmp/layer,workdir=$tmp/work" "$tmp/root"
    mkdir -p "$tmp/root/root/debs"
    for p in "${PACKAGES[@]}"; do cp "$tmp/debs/${p}_"*.deb "$tmp/root/root/debs/"; done
    systemd-nspawn -q --register=no --keep-unit --private-network -D "$tmp/root" \
        sh -c 'dpkg -i /root/debs/*.deb >/dev/null && rm -rf /root/debs'
    umount "$tmp/root"
    trap - EXIT
    rm -rf "$tmp/work" "$tmp/root"

    # The images: busybox-static's one binary, linked as the commands the pods run.
    dpkg-deb -x "$tmp"/debs/busybox-static_*.deb "$tmp/busybox/x"
    local img="$tmp/busybox/img"
    mkdir -p "$img/bin" "$img/www" "$img/tmp"
    cp "$tmp/busybox/x/bin/busybox" "$img/bin/busybox"
    for cmd in sh sleep httpd cat ls; do ln -s busybox "$img/bin/$cmd"; done
    echo "berth pod" >"$img/www/index.html"
    _image "$img" localhost/pause:local '["/bin/sleep","2147483647"]' "$arch" "$tmp/images/pause.tar"
    _image "$img" localhost/httpd:local '["/bin/httpd","-f","-p","8080","-h","/www"]' "$arch" \
        "$tmp/images/httpd.tar"
    rm -rf "$tmp/busybox" "$tmp/debs"
    echo "$recipe" >"$tmp/.berth-runtime-complete"
    # Swapped in whole: until here the old cache (if any) stayed usable.
    rm -rf "$OUT.old"
    if [[ -d "$OUT" ]]; then mv "$OUT" "$OUT.old"; fi
    mv "$tmp" "$OUT"
    rm -rf "$OUT.old"
    berth_say "built $OUT"
}

berth_setup_main "$@"
