#!/usr/bin/env bash
# Installs what the portal needs and skips what is already there.
#
#   scripts/setup.sh demo   toolchain for the wasm bundle, wasm-bindgen-cli, Maven and a
#                           JDK for Keycloak, the Keycloak distribution
#   scripts/setup.sh test   all of the above, plus Chromium, PostgreSQL and the npm
#                           packages of the browser tests
#
# Debian packages come from apt-get (as root, or through sudo); Rust tools from crates.io;
# Keycloak from the Maven registry; npm packages from package-lock.json.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

mode=${1:-test}
case $mode in
    demo | test) ;;
    *) die "unknown setup mode '$mode': use demo or test" ;;
esac

apt_install() {
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || die "installing $* needs root or sudo"
        sudo=(sudo)
    fi
    log "installing Debian packages: $*"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

have_package() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

command -v cargo >/dev/null || die "cargo not found: install Rust with rustup (https://rustup.rs)"

packages=()
if ! wasm_target_from_rustup; then
    for package in rustc-web cargo-web rust-web-src lld; do
        have_package "$package" || packages+=("$package")
    done
fi
command -v mvn >/dev/null || packages+=(maven)
command -v java >/dev/null || ls /usr/lib/jvm/*/bin/java >/dev/null 2>&1 || packages+=(openjdk-17-jre-headless)
command -v curl >/dev/null || packages+=(curl)
command -v brotli >/dev/null || packages+=(brotli)
command -v flock >/dev/null || packages+=(util-linux)
if [[ $mode == test ]]; then
    [[ -x /usr/bin/chromium ]] || packages+=(chromium)
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || packages+=(postgresql)
    command -v npm >/dev/null || packages+=(nodejs npm)
    command -v jq >/dev/null || packages+=(jq)
    command -v openssl >/dev/null || packages+=(openssl)
fi
if ((${#packages[@]})); then
    apt_install "${packages[@]}"
fi

# wasm-bindgen-cli must have exactly the version of the wasm-bindgen crate in Cargo.lock.
bindgen_version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/"/, "", $3); print $3 }' Cargo.lock)
[[ -n $bindgen_version ]] || die "wasm-bindgen not found in Cargo.lock"
if [[ $(wasm-bindgen --version 2>/dev/null) != "wasm-bindgen $bindgen_version" ]]; then
    log "installing wasm-bindgen-cli $bindgen_version (about 2 minutes)"
    # Without --locked: one of the CLI's locked dependency versions is not served by every
    # crates.io mirror, and the resolved set builds the same tool.
    cargo install wasm-bindgen-cli --version "$bindgen_version" --quiet
fi

if [[ $mode == test ]]; then
    # The stamp is a copy of the lock file that the installed packages came from.
    stamp=end2end/node_modules/.stint-package-lock.json
    if ! cmp -s end2end/package-lock.json "$stamp"; then
        log "installing the browser tests' npm packages"
        (cd end2end && npm ci --no-audit --no-fund --loglevel=error)
        cp end2end/package-lock.json "$stamp"
    fi
fi

dev/keycloak.sh fetch
log "setup ($mode) complete"
