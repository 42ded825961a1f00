#!/usr/bin/env bash
# Installs what the network suite (tests/tests/etcd_netns.rs) needs: a real etcd (Debian's
# etcd-server, 3.4) that the master's namespace runs from the agent's etcd.conf, iproute2 for the
# nodes' network namespaces and their bridge, and curl as the nodes' etcd client; and for the
# masters' LAN (tests/src/lan.rs) etcdctl (Debian's etcd-client), which judges membership and
# health. Nothing is started here: the test starts etcd in its own namespace and stops it by its
# PID.
#
# Idempotent: a no-op when every tool is present. Install only; nothing is built.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

install_part() {
    local need=()
    command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
    # etcdctl: the LAN suite's judge of membership and health (tests/src/lan.rs).
    command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
    command -v ip >/dev/null 2>&1 || need+=(iproute2)
    command -v curl >/dev/null 2>&1 || need+=(curl)
    ((${#need[@]})) || return 0

    # The package must not start an etcd of its own on the host: a policy-rc.d that refuses
    # every start, unless the machine has one already (then it is left as it is).
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    berth_apt_install "${need[@]}"
    command -v etcd >/dev/null || berth_die "etcd still missing after installing etcd-server"
    command -v etcdctl >/dev/null || berth_die "etcdctl still missing after installing etcd-client"
}

berth_setup_main "$@"
