#!/usr/bin/env bash
# Installs what the agent's host-file suite (tests/tests/host_files.rs) needs: strace, which
# kills the agent at each rename(2) of a converge (`-e inject=rename:signal=KILL:when=N`), and
# util-linux's unshare with glibc's getent, which resolve names through the written /etc/hosts in
# a private mount namespace. Nothing is started here.
#
# Idempotent: a no-op when every tool is present. Install only; nothing is built.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

install_part() {
    local need=()
    command -v strace >/dev/null 2>&1 || need+=(strace)
    command -v unshare >/dev/null 2>&1 || need+=(util-linux)
    command -v getent >/dev/null 2>&1 || need+=(libc-bin)
    ((${#need[@]})) || return 0
    berth_apt_install "${need[@]}"
}

berth_setup_main "$@"
