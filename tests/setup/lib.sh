# shellcheck shell=bash
# What every tests/setup/*.sh shares; sourced, never run.
#
# - The script's two parts: `install_part` installs packages (apt, pip); `build_part`, where a
#   script has one, builds a cached artefact from them (a rootfs, the test OS). `--install-only`
#   runs the first alone, which is what tests/tests/fresh_setup.rs checks on a clean machine.
# - The Debian mirror, read from the machine's own apt sources (deb822 `*.sources` and one-line
#   `sources.list` alike, through apt's own parser), so that no mirror is written into berth.
# - `berth_apt_install`, which installs a package from the release that the packages already
#   installed from the same source came from. A machine image may carry, say, qemu-utils from
#   bookworm-backports while its sources list only bookworm; apt then refuses bookworm's
#   qemu-system-x86 beside it ("held broken packages"). berth enables bookworm-backports from
#   the machine's own mirror and takes qemu-system-x86 from there instead.
# - `apt-get update` once per run: the lists an image ships may be stale or absent.

# A bare `bash`, sudo or cron may run a script with a PATH without the sbin directories, where
# debootstrap, mkfs.fat, mke2fs, ip and chattr live; `command -v` would then miss installed tools,
# and a tool installed by apt would still not be found afterwards.
for _berth_dir in /usr/local/sbin /usr/sbin /sbin; do
    case ":$PATH:" in
    *":$_berth_dir:"*) ;;
    *) PATH="$PATH:$_berth_dir" ;;
    esac
done
unset _berth_dir
export PATH
export DEBIAN_FRONTEND=noninteractive

BERTH_SETUP_NAME="tests/setup/$(basename "${BASH_SOURCE[1]:-setup}")"

berth_say() { echo "$BERTH_SETUP_NAME: $*"; }
berth_die() {
    echo "$BERTH_SETUP_NAME: $*" >&2
    exit 1
}

# Runs the script's parts: `install_part`, then `build_part` if the script defines one, unless
# the command line is `--install-only`.
berth_setup_main() {
    local install_only=0
    while (($#)); do
        case "$1" in
        --install-only) install_only=1 ;;
        -h | --help)
            echo "usage: $BERTH_SETUP_NAME [--install-only]"
            echo "  --install-only  install the packages this suite needs; build nothing"
            exit 0
            ;;
        *)
            echo "usage: $BERTH_SETUP_NAME [--install-only]" >&2
            exit 2
            ;;
        esac
        shift
    done
    install_part
    if ((!install_only)) && declare -F build_part >/dev/null; then
        build_part
    fi
}

# This machine's Debian release name (bookworm), from /etc/os-release.
berth_codename() {
    local codename
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
    [[ -n "$codename" ]] || berth_die "/etc/os-release has no VERSION_CODENAME; this is not a Debian release apt can name"
    echo "$codename"
}

# Every enabled binary apt source as "URI SUITE" lines, in apt's order, one per suite. apt parses
# its own sources (both formats, `[options]`, `Enabled: no`, APT_CONFIG and Dir::Etc), and
# --no-release-info lists them even before the first `apt-get update`.
berth_apt_sources() {
    # shellcheck disable=SC2016 # $(...) here is apt's format syntax, not the shell's
    apt-get indextargets --no-release-info --format '$(TARGET_OF) $(REPO_URI) $(RELEASE)' |
        awk '$1 == "deb" { sub(/\/$/, "", $2); if (!seen[$2 " " $3]++) print $2, $3 }'
}

# The Debian mirror this machine installs from: the URI of its apt source for the release itself
# (bookworm, not -updates or -security). BERTH_DEBIAN_MIRROR overrides it.
berth_mirror() {
    if [[ -n "${BERTH_DEBIAN_MIRROR:-}" ]]; then
        echo "$BERTH_DEBIAN_MIRROR"
        return
    fi
    local codename uri
    codename="$(berth_codename)"
    uri="$(berth_apt_sources | awk -v suite="$codename" '$2 == suite { print $1; exit }')"
    [[ -n "$uri" ]] || berth_die "no apt source lists suite $codename (checked /etc/apt/sources.list and sources.list.d/*.list, *.sources): add the Debian mirror for $codename there, or set BERTH_DEBIAN_MIRROR=URI"
    echo "$uri"
}

# Adds <codename>-backports from this machine's mirror to apt's sources, unless some source lists
# it already. Backports are NotAutomatic (apt priority 100): nothing is taken from there unless
# asked for by name, so enabling them changes no other package on the machine.
berth_enable_backports() {
    local codename mirror parts file keyring
    codename="$(berth_codename)"
    if berth_apt_sources | awk -v suite="$codename-backports" '$2 == suite { found = 1 } END { exit !found }'; then
        return 0
    fi
    mirror="$(berth_mirror)"
    eval "$(apt-config shell parts Dir::Etc::sourceparts/d)"
    file="${parts%/}/berth-$codename-backports.sources"
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    {
        echo "# Added by berth's $BERTH_SETUP_NAME: $codename-backports from this machine's mirror."
        echo "Types: deb"
        echo "URIs: $mirror"
        echo "Suites: $codename-backports"
        echo "Components: main"
        [[ -f "$keyring" ]] && echo "Signed-By: $keyring"
    } >"$file.tmp"
    mv "$file.tmp" "$file"
    berth_say "enabled $codename-backports from $mirror in $file"
}

# A digest of apt's sources: the lists are current when `apt-get update` ran with these sources.
_berth_sources_digest() {
    apt-get indextargets --no-release-info | sha256sum | cut -d' ' -f1
}

# `apt-get update`, once per run of tests/run (which shares BERTH_APT_STAMP between the scripts)
# or once per script, and again whenever the sources changed since.
berth_apt_update() {
    local digest
    digest="$(_berth_sources_digest)"
    [[ "${_BERTH_APT_UPDATED:-}" == "$digest" ]] && return 0
    if [[ -n "${BERTH_APT_STAMP:-}" && -f "$BERTH_APT_STAMP" &&
        "$(cat "$BERTH_APT_STAMP")" == "$digest" ]]; then
        _BERTH_APT_UPDATED="$digest"
        return 0
    fi
    berth_say "apt-get update"
    apt-get update -qq
    _BERTH_APT_UPDATED="$digest"
    if [[ -n "${BERTH_APT_STAMP:-}" ]]; then
        echo "$digest" >"$BERTH_APT_STAMP"
    fi
}

# A Debian version without its binNMU suffix (+b3): binary packages of one source upload differ
# by it, and it says nothing about which release they belong to.
_berth_upload_version() {
    local v="$1"
    echo "${v%+b[0-9]*}"
}

# The source package of the binary package $1 (its own name when the Source field is absent).
_berth_source_of() {
    apt-cache show --no-all-versions "$1" 2>/dev/null |
        awk -v pkg="$1" '/^Source:/ { print $2; found = 1; exit } END { if (!found) print pkg }'
}

# The highest version of $1 that suite $2 offers ("" when it has none).
_berth_suite_version() {
    local pkg="$1" suite="$2" v best=""
    while read -r v; do
        if [[ -z "$best" ]] || dpkg --compare-versions "$v" gt "$best"; then
            best="$v"
        fi
    done < <(apt-cache madison "$pkg" 2>/dev/null |
        awk -F' [|] ' -v suite="$suite" '{ split($3, at, " "); split(at[2], sc, "/"); if (sc[1] == suite) print $2 }')
    echo "$best"
}

# The candidate version apt would install for $1 by default ("" when none).
_berth_candidate() {
    apt-cache policy "$1" 2>/dev/null | awk '/^ *Candidate:/ { if ($2 != "(none)") print $2; exit }'
}

# Installs the packages $@ (not installed yet) and what they depend on, without recommends.
#
# A package built from the same source as packages already installed (qemu-system-x86 beside
# qemu-utils) is installed from the release those came from: when the installed ones are newer
# than what the default release offers, <codename>-backports is enabled from this machine's
# mirror and the package is installed with `-t <codename>-backports`, so that the dependencies
# that must match (qemu-system-common, qemu-system-data, seabios for qemu-system-x86) come from
# backports too; `pkg/<codename>-backports` alone leaves them at the default release's versions
# and apt refuses. The other packages are installed from the default release, in a first
# apt-get call. When no release offers a version that new, it stops with the packages, versions
# and what to do.
berth_apt_install() {
    (($#)) || return 0
    berth_apt_update
    local codename pkg src sibling version newest newest_from cand bpo
    local plain=() backports=()
    codename="$(berth_codename)"
    for pkg in "$@"; do
        src="$(_berth_source_of "$pkg")"
        newest=""
        newest_from=""
        while read -r sibling version; do
            if [[ -z "$newest" ]] || dpkg --compare-versions "$version" gt "$newest"; then
                newest="$version"
                newest_from="$sibling"
            fi
        done < <(dpkg-query -W -f='${db:Status-Abbrev} ${source:Package} ${Package} ${Version}\n' 2>/dev/null |
            awk -v src="$src" '$1 == "ii" && $2 == src { print $3, $4 }')
        cand="$(_berth_candidate "$pkg")"
        if [[ -z "$newest" || -z "$cand" ]] ||
            dpkg --compare-versions "$(_berth_upload_version "$cand")" ge "$(_berth_upload_version "$newest")"; then
            plain+=("$pkg")
            continue
        fi
        berth_say "$newest_from $newest is installed, newer than $pkg $cand from $codename: looking in $codename-backports"
        berth_enable_backports
        berth_apt_update
        bpo="$(_berth_suite_version "$pkg" "$codename-backports")"
        if [[ -z "$bpo" ]] ||
            dpkg --compare-versions "$(_berth_upload_version "$bpo")" lt "$(_berth_upload_version "$newest")"; then
            berth_die "$pkg: this machine has $newest_from $newest (source $src), newer than $pkg in $codename ($cand) and in $codename-backports (${bpo:-none}) at $(berth_mirror); apt cannot install $pkg beside it. Install $pkg $newest from where $newest_from came from, or remove $newest_from, and run this script again"
        fi
        backports+=("$pkg")
    done
    if ((${#plain[@]})); then
        berth_say "installing ${plain[*]}"
        apt-get install -y -qq --no-install-recommends "${plain[@]}"
    fi
    if ((${#backports[@]})); then
        berth_say "installing ${backports[*]} from $codename-backports"
        apt-get install -y -qq --no-install-recommends -t "$codename-backports" "${backports[@]}"
    fi
}
