#!/usr/bin/env bash
# Builds the berth test OS: a debootstrapped Debian bookworm (kernel, systemd, udev, dbus,
# systemd-networkd, dracut with OSTree's module, systemd-boot's EFI binary, rEFInd's ext4
# driver) laid out the way OSTree expects, committed to a bare-user repository as the base that `berth-image commit`
# layers berth onto (tests/tests/qemu_firstboot.rs, the Vagrant box). It also carries the Fedora 21
# units of tests/fixtures/fedora-21 (their daemons are the stand-in, layered by the tests).
#
# Output, cached: ${BERTH_CACHE:-/var/cache/berth}/testos/repo, ref berth-testos/x86_64/base.
# The cache is marked complete with the recipe's checksum (this script, tests/testos/, the
# fixture units) only after the commit succeeded, so an interrupted or outdated build is redone.
#
# Installing part: debootstrap, ostree and e2fsprogs (chattr). Building part: the test OS, from
# this machine's own Debian mirror (lib.sh; BERTH_DEBIAN_MIRROR overrides it).
# Idempotent: a no-op (well under a second) when the cache matches. A build takes ~2 minutes.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

HERE="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${BERTH_CACHE:-/var/cache/berth}"
OUT="$CACHE/testos"
STAMP="$OUT/.berth-testos-complete"
REF="berth-testos/x86_64/base"

install_part() {
    local need=()
    command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
    command -v ostree >/dev/null 2>&1 || need+=(ostree)
    command -v chattr >/dev/null 2>&1 || need+=(e2fsprogs)
    berth_apt_install "${need[@]}"
}

build_part() {
    # tests/testos/layer/ is what the tests layer on top (berth-image commit), not part of the base.
    RECIPE="$(cat "$0" $(find "$HERE/testos" -maxdepth 1 -type f | sort) "$HERE"/fixtures/fedora-21/units/* |
        sha256sum | cut -d' ' -f1)"
    if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$RECIPE" ]]; then
        return 0
    fi

    MIRROR="$(berth_mirror)"
    berth_say "building the test OS into $OUT from $MIRROR (about 2 minutes)"
    mkdir -p "$CACHE"
    WORK="$CACHE/testos.tmp"
    ROOT="$WORK/root"
    mounted=()
    cleanup() {
        for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
            umount -l "${mounted[$i]}" 2>/dev/null || true
        done
    }
    trap cleanup EXIT
    if [[ -d "$WORK" ]]; then
        # A previous, interrupted build: deployments and debootstrap leave immutable files behind.
        chattr -R -i "$WORK" 2>/dev/null || true
        rm -rf "$WORK"
    fi
    mkdir -p "$WORK"

    debootstrap --variant=minbase --include=systemd,systemd-sysv,udev,dbus,iproute2 \
        bookworm "$ROOT" "$MIRROR"

    for m in proc sys dev; do
        mount --bind "/$m" "$ROOT/$m"
        mounted+=("$ROOT/$m")
    done
    in_root() { chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 "$@"; }
    # dracut and OSTree's dracut module first: a kernel installed before them pulls in
    # initramfs-tools and builds an initramfs nobody uses (~60 s).
    in_root apt-get install -y -qq --no-install-recommends \
        dracut-core dracut ostree ostree-boot zstd systemd-boot-efi
    INITRD=No in_root apt-get install -y -qq --no-install-recommends linux-image-amd64
    # rEFInd's UEFI ext4 driver, which berth-image disk puts on the ESP so that systemd-boot reads
    # /boot itself. Only the driver: installing the package would run refind-install against an ESP
    # the chroot does not have.
    in_root sh -c 'cd /tmp && apt-get download -qq refind'
    dpkg-deb --fsys-tarfile "$ROOT"/tmp/refind_*.deb |
        tar -x -C "$ROOT" ./usr/share/refind/refind/drivers_x64/ext4_x64.efi
    rm -f "$ROOT"/tmp/refind_*.deb
    KVER="$(ls "$ROOT/usr/lib/modules" | sort -V | tail -n1)"

    # Drivers a VM never needs: smaller tree, faster `berth-image disk`.
    for d in drivers/gpu drivers/media drivers/net/wireless drivers/infiniband drivers/staging \
        drivers/bluetooth drivers/isdn drivers/iio sound net/wireless net/bluetooth net/mac80211; do
        rm -rf "$ROOT/usr/lib/modules/$KVER/kernel/$d"
    done
    in_root depmod "$KVER"

    install -m 0644 "$HERE/testos/dracut.conf" "$ROOT/etc/dracut.conf.d/90-berth-testos.conf"
    in_root dracut --force --kver "$KVER" "/usr/lib/modules/$KVER/initramfs.img"
    cp "$ROOT/boot/vmlinuz-$KVER" "$ROOT/usr/lib/modules/$KVER/vmlinuz"

    # Users of the Fedora 21 units.
    in_root groupadd -r -g 994 kube
    in_root groupadd -r -g 993 etcd
    in_root groupadd -r -g 992 docker
    in_root useradd -r -u 996 -g kube -d / -s /usr/sbin/nologin -c "Kubernetes user" kube
    in_root useradd -r -u 995 -g etcd -d /var/lib/etcd -s /usr/sbin/nologin -c "etcd user" etcd
    install -m 0644 "$HERE"/fixtures/fedora-21/units/* "$ROOT/usr/lib/systemd/system/"

    install -m 0644 "$HERE/testos/80-dhcp.network" "$ROOT/etc/systemd/network/80-dhcp.network"
    install -m 0644 "$HERE/testos/tmpfiles.conf" "$ROOT/usr/lib/tmpfiles.d/berth-testos.conf"
    install -m 0644 "$HERE/testos/fstab" "$ROOT/etc/fstab"
    echo berth-testos >"$ROOT/etc/hostname"
    in_root systemctl enable systemd-networkd.service systemd-networkd-wait-online.service
    # Units that wait on hardware or timers a test VM does not have.
    for unit in getty@tty1.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
        e2scrub_reap.service fstrim.timer systemd-timesyncd.service; do
        in_root systemctl mask "$unit" >/dev/null 2>&1 || true
    done
    # Generators the test OS has no use for. systemd runs every generator at boot and again at each
    # daemon-reload (berth-agent reloads after writing units); under TCG each one costs a noticeable
    # fraction of a second. Kept: fstab (/boot), debug (systemd.mask= on the command line), getty,
    # and OSTree's own.
    mkdir -p "$ROOT/etc/systemd/system-generators"
    for g in systemd-cryptsetup-generator systemd-gpt-auto-generator systemd-hibernate-resume-generator \
        systemd-integritysetup-generator systemd-rc-local-generator systemd-run-generator \
        systemd-system-update-generator systemd-sysv-generator systemd-veritysetup-generator; do
        ln -sf /dev/null "$ROOT/etc/systemd/system-generators/$g"
    done
    in_root apt-get clean
    cleanup
    mounted=()

    # The layout OSTree expects.
    rm -rf "$ROOT"/boot/* "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/*
    find "$ROOT/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'C*' -exec rm -rf {} +
    rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*
    for d in dev proc sys run tmp; do
        rm -rf "${ROOT:?}/$d"
        mkdir -m 0755 "$ROOT/$d"
    done
    chmod 1777 "$ROOT/tmp"
    # dpkg's database lives under /var, which OSTree does not deploy; keep it readable in /usr.
    mkdir -p "$ROOT/usr/share/dpkg/database"
    cp -a "$ROOT/var/lib/dpkg/." "$ROOT/usr/share/dpkg/database/"
    rm -rf "${ROOT:?}/var"
    mkdir -m 0755 "$ROOT/var"
    for d in home opt srv mnt; do
        rm -rf "${ROOT:?}/$d"
        ln -s "var/$d" "$ROOT/$d"
    done
    rm -rf "$ROOT/root" "$ROOT/media" "$ROOT/usr/local"
    ln -s var/roothome "$ROOT/root"
    ln -s run/media "$ROOT/media"
    ln -s ../var/usrlocal "$ROOT/usr/local"
    mkdir -m 0755 "$ROOT/sysroot"
    ln -s sysroot/ostree "$ROOT/ostree"
    : >"$ROOT/etc/machine-id"
    mv "$ROOT/etc" "$ROOT/usr/etc"

    ostree --repo="$WORK/repo" init --mode=bare-user
    ostree --repo="$WORK/repo" commit --branch="$REF" --tree=dir="$ROOT" \
        --subject="berth test OS (Debian bookworm, kernel $KVER)" \
        --add-metadata-string=version="bookworm-$KVER" --timestamp="2025-01-01T00:00:00Z" >/dev/null
    chattr -R -i "$ROOT" 2>/dev/null || true
    rm -rf "$ROOT"

    rm -rf "$OUT"
    echo "$RECIPE" >"$WORK/.berth-testos-complete"
    mv "$WORK" "$OUT"
    berth_say "$REF in $OUT/repo ($(ostree --repo="$OUT/repo" rev-parse "$REF"))"
}

berth_setup_main "$@"
