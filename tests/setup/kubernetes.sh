#!/usr/bin/env bash
# Builds real Kubernetes 1.20.2 server and client binaries for berth's Kubernetes suites
# (tests/tests/kubernetes_build.rs). Debian 12 packages
# no Kubernetes server binaries, but Debian's source package `kubernetes`
# (1.20.5+really1.20.2-1.1+deb12u1, upstream 1.20.2 with its whole vendor/ tree) builds offline
# with Debian's Go 1.19.
#
# Output, cached: ${BERTH_CACHE:-/var/cache/berth}/kubernetes-1.20.2/bin/ with kubeadm,
# kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubemark and kubectl; beside
# it the source tree and the Go build cache (gocache/), so that a rebuild after a recipe change
# compiles only what changed. The cache is marked complete with this script's checksum only
# after every binary was built, so an interrupted or outdated build is redone.
#
# Installing part: golang-go, jq, rsync, dpkg-dev (dpkg-source unpacks and patches the source).
# Building part: the source and two Go library packages from this machine's own Debian mirrors
# (lib.sh; BERTH_DEBIAN_MIRROR overrides the release's), through a private apt configuration;
# /etc/apt is never changed. Idempotent: a no-op (under a second) when the cache matches.
# A build takes about 6-8 minutes on 2 cores.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

CACHE="${BERTH_CACHE:-/var/cache/berth}"
OUT="$CACHE/kubernetes-1.20.2"
STAMP="$OUT/.berth-kubernetes-complete"
SRC_VERSION="1.20.5+really1.20.2-1.1+deb12u1"
KUBE_VERSION="v1.20.2"
BINARIES=(kubeadm kube-apiserver kube-controller-manager kube-scheduler kubelet kubemark kubectl)

install_part() {
    local need=()
    command -v go >/dev/null 2>&1 || need+=(golang-go)
    command -v jq >/dev/null 2>&1 || need+=(jq)
    command -v rsync >/dev/null 2>&1 || need+=(rsync)
    command -v dpkg-source >/dev/null 2>&1 || need+=(dpkg-dev)
    berth_apt_install "${need[@]}"
}

# apt-get (or apt-cache, when the first argument is apt-cache) with the private sources and
# lists under $WORK/apt; nothing of the system's apt state is read or written besides its keyrings.
_k8s_apt() {
    local tool=apt-get
    if [[ "$1" == apt-cache ]]; then
        tool=apt-cache
        shift
    fi
    "$tool" -q \
        -o Dir::Etc::SourceList="$WORK/apt/sources.list" \
        -o Dir::Etc::SourceParts="$WORK/apt/sources.list.d" \
        -o Dir::State::Lists="$WORK/apt/lists" \
        -o Dir::Cache::pkgcache="" -o Dir::Cache::srcpkgcache="" \
        -o APT::Sandbox::User=root \
        "$@"
}

# The private sources.list: deb and deb-src for the release, -updates and -security, each from
# the URI the machine's own apt sources give for that suite (the security suite usually lives on
# another path of the same mirror); a suite the machine does not list comes from the release's
# mirror.
_k8s_sources() {
    local codename mirror suite uri keyopt=""
    codename="$(berth_codename)"
    mirror="$(berth_mirror)"
    [[ -f /usr/share/keyrings/debian-archive-keyring.gpg ]] &&
        keyopt="[signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
    for suite in "$codename" "$codename-updates" "$codename-security"; do
        uri="$(berth_apt_sources | awk -v suite="$suite" '$2 == suite { print $1; exit }')"
        if [[ "$suite" == "$codename" || -z "$uri" ]]; then
            uri="$mirror"
        fi
        echo "deb ${keyopt}$uri $suite main"
        echo "deb-src ${keyopt}$uri $suite main"
    done
}

build_part() {
    local recipe
    recipe="$(sha256sum "$0" | cut -d' ' -f1)"
    if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$recipe" ]]; then
        return 0
    fi
    berth_say "building Kubernetes $KUBE_VERSION from Debian's source into $OUT (about 6-8 minutes)"
    local start=$SECONDS
    mkdir -p "$CACHE"
    WORK="$CACHE/kubernetes-1.20.2.tmp"
    # An interrupted build starts again from scratch, but keeps its Go build cache; an outdated
    # finished one hands its Go build cache on.
    if [[ -d "$OUT/gocache" && ! -d "$WORK/gocache" ]]; then
        mkdir -p "$WORK"
        mv "$OUT/gocache" "$WORK/gocache"
    fi
    rm -rf "$OUT"
    find "$WORK" -mindepth 1 -maxdepth 1 ! -name gocache -exec rm -rf {} + 2>/dev/null || true
    mkdir -p "$WORK/apt/sources.list.d" "$WORK/apt/lists/partial" "$WORK/deb" "$WORK/fetch" "$WORK/bin"

    _k8s_sources >"$WORK/apt/sources.list"
    _k8s_apt update -qq
    # The exact upload this recipe was measured with; say which suites carry what if it is gone.
    if ! _k8s_apt apt-cache showsrc kubernetes 2>/dev/null | grep -x "Version: $SRC_VERSION" >/dev/null; then
        berth_die "no suite in $WORK/apt/sources.list offers source kubernetes $SRC_VERSION (offered: $(_k8s_apt apt-cache showsrc kubernetes 2>/dev/null | awk '/^Version:/ { printf "%s ", $2 }')); this recipe builds that upload"
    fi
    (cd "$WORK/fetch" && _k8s_apt source -qq --only-source "kubernetes=$SRC_VERSION")
    local tree
    tree="$(find "$WORK/fetch" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)"
    [[ -n "$tree" && -f "$tree/debian/changelog" ]] || berth_die "apt-get source kubernetes left no unpacked tree in $WORK/fetch"

    # GOPATH mode, as Kubernetes 1.20's own Makefile builds: the tree must sit at
    # $GOPATH/src/k8s.io/kubernetes. (Module mode with -mod=vendor fails with Go 1.19 on the
    # order of the replacements in vendor/modules.txt.)
    local gopath="$WORK/gopath" kube
    kube="$gopath/src/k8s.io/kubernetes"
    mkdir -p "$(dirname "$kube")"
    mv "$tree" "$kube"

    # The vendored reflect2 1.0.1 breaks under Go >= 1.18: every JSON decode into a struct with a
    # map field panics in reflect2.(*UnsafeMapType).Key, which kills kube-apiserver and
    # `kubeadm config print init-defaults`. Debian's reflect2 1.0.2 and json-iterator 1.1.12
    # (its user, which 1.0.2 needs) replace them; unpacked only, never installed.
    (cd "$WORK/deb" && _k8s_apt download -qq golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev)
    local deb
    for deb in "$WORK"/deb/*.deb; do
        dpkg-deb -x "$deb" "$WORK/deb/root"
    done
    local lib
    for lib in github.com/modern-go/reflect2 github.com/json-iterator/go; do
        [[ -d "$WORK/deb/root/usr/share/gocode/src/$lib" ]] || berth_die "Debian's package for $lib has no usr/share/gocode/src/$lib"
        rm -rf "${kube:?}/vendor/$lib"
        rsync -a "$WORK/deb/root/usr/share/gocode/src/$lib/" "$kube/vendor/$lib/"
    done

    export GOPATH="$gopath" GO111MODULE=off CGO_ENABLED=0 GOCACHE="$WORK/gocache" GOFLAGS=
    cd "$kube"

    # The tarball lacks pkg/generated/openapi/zz_generated.openapi.go, which kube-apiserver imports
    # (without it: undefined: openapi.GetOpenAPIDefinitions). openapi-gen writes it from the
    # packages tagged +k8s:openapi-gen, as the KUBE target of Makefile.generated_files does;
    # `make` would rerun every generator (about 13 minutes).
    go build -o "$WORK/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
    # As the Makefile's KUBE target: every tagged package outside vendor/ (those of staging/
    # under the vendor/ paths that link to them), less code-generator's and sample-apiserver's.
    local dirs
    dirs="$(grep -rl --include='*.go' -e '+k8s:openapi-gen=' \
        --exclude-dir=.git --exclude-dir=_output --exclude-dir=vendor --exclude-dir=third_party \
        --exclude-dir=testdata --exclude-dir=debian . |
        grep -v -e '^\./staging/src/k8s\.io/code-generator/' -e '^\./staging/src/k8s\.io/sample-apiserver/' |
        xargs -n1 dirname | LC_ALL=C sort -u |
        sed -e 's,^\./staging/src/,./vendor/,' -e 's,^\./,k8s.io/kubernetes/,' | paste -sd,)"
    [[ -n "$dirs" ]] || berth_die "no package in $kube is tagged +k8s:openapi-gen"
    "$WORK/openapi-gen" \
        --input-dirs "$dirs" \
        --output-package k8s.io/kubernetes/pkg/generated/openapi \
        -O zz_generated.openapi \
        --go-header-file vendor/k8s.io/code-generator/hack/boilerplate.go.txt \
        --report-filename "$WORK/openapi-violations.list" \
        -o "$gopath/src"
    [[ -f pkg/generated/openapi/zz_generated.openapi.go ]] || berth_die "openapi-gen wrote no pkg/generated/openapi/zz_generated.openapi.go"

    # Version stamps. In GOPATH mode the vendored packages' import paths carry the
    # k8s.io/kubernetes/vendor/ prefix; without it Go ignores -X silently and the binaries say
    # v0.0.0-master. The build date is the Debian upload's, so rebuilds are byte-identical.
    local date vpkg ldflags name
    date="$(date -u -d "$(dpkg-parsechangelog -l debian/changelog -S Date)" +%Y-%m-%dT%H:%M:%SZ)"
    ldflags="-s -w"
    for vpkg in k8s.io/kubernetes/vendor/k8s.io/component-base/version k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
        ldflags+=" -X $vpkg.gitVersion=$KUBE_VERSION -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=20"
        ldflags+=" -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=$date"
    done
    for name in "${BINARIES[@]}"; do
        berth_say "go build ./cmd/$name"
        go build -ldflags "$ldflags" -o "$WORK/bin/$name" "./cmd/$name"
    done
    "$WORK/bin/kubeadm" version -o short | grep -qx "$KUBE_VERSION" ||
        berth_die "kubeadm built, but does not report version $KUBE_VERSION"

    cd /
    rm -rf "$WORK/apt" "$WORK/deb" "$WORK/fetch" "$WORK/openapi-gen"
    echo "$recipe" >"$WORK/.berth-kubernetes-complete"
    mv "$WORK" "$OUT"
    berth_say "built ${BINARIES[*]} into $OUT/bin in $((SECONDS - start)) s"
}

berth_setup_main "$@"
