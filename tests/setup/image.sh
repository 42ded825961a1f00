#!/usr/bin/env bash
# Installs what the berth-image suites need: libostree (headers to build the
# ostree crate, the CLI the tests check with), attr (setfattr for xattrs on
# the base tree), gnupg (signing test) and e2fsprogs (chattr, to remove a
# test sysroot whose deployment OSTree made immutable). Idempotent; a no-op when present.
set -euo pipefail

CACHE="${BERTH_CACHE:-/var/cache/berth}"
mkdir -p "$CACHE"

need=()
command -v ostree >/dev/null 2>&1 || need+=(ostree)
pkg-config --exists ostree-1 2>/dev/null || need+=(libostree-dev pkg-config)
command -v setfattr >/dev/null 2>&1 || need+=(attr)
command -v gpg-agent >/dev/null 2>&1 || need+=(gnupg)
command -v chattr >/dev/null 2>&1 || need+=(e2fsprogs)

if ((${#need[@]})); then
    echo "tests/setup/image.sh: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# The ostree crate is built for the libostree 2022.7 API (feature v2022_7).
if ! pkg-config --atleast-version=2022.7 ostree-1; then
    echo "tests/setup/image.sh: libostree $(pkg-config --modversion ostree-1) is older than 2022.7" >&2
    exit 1
fi
