#!/usr/bin/env bash
# Installs what the moto compatibility suite (tests/tests/moto.rs) needs: a Python venv holding
# moto's server (an independent implementation of the EC2, IAM and STS APIs that verifies SigV4
# signatures) and boto3, which tests/moto/setup.py uses to create the VPC, groups, instances and role.
#
# Idempotent: a no-op (well under a second) when the venv exists with the pinned versions and its
# interpreter still runs (a venv made from a pyenv or /usr/local Python breaks when that Python
# goes). The venv is marked complete only after pip succeeded, so an interrupted install is
# redone, not reused. (It is built in place: a venv's scripts name its interpreter by absolute
# path, so it cannot be moved.) Install only: the venv is what this script installs.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

CACHE="${BERTH_CACHE:-/var/cache/berth}"
VENV="$CACHE/moto-venv"
STAMP="$VENV/.berth-venv-complete"
# Pinned so that every machine tests against the same moto; bump deliberately (and rerun the suite).
REQUIREMENTS="moto[server]==5.2.5 boto3==1.44.8"

venv_ok() {
    [[ -f "$STAMP" && "$(cat "$STAMP")" == "$REQUIREMENTS" && -x "$VENV/bin/moto_server" ]] &&
        "$VENV/bin/python" -c 'import importlib.util as u, sys; sys.exit(not all(u.find_spec(m) for m in ("moto", "boto3", "flask")))' 2>/dev/null
}

install_part() {
    venv_ok && return 0

    local python="${PYTHON:-python3}"
    if ! command -v "$python" >/dev/null 2>&1 || ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
        # Debian splits venv and ensurepip out of python3.
        berth_apt_install python3 python3-venv
        python=/usr/bin/python3
    fi

    berth_say "creating $VENV with $REQUIREMENTS"
    mkdir -p "$CACHE"
    rm -rf "$VENV"
    "$python" -m venv "$VENV"
    # shellcheck disable=SC2086 # the requirement list is split on purpose
    "$VENV/bin/pip" install --quiet --disable-pip-version-check $REQUIREMENTS
    echo "$REQUIREMENTS" >"$STAMP"
    venv_ok || berth_die "$VENV does not import moto, boto3 and flask after pip install"
}

berth_setup_main "$@"
