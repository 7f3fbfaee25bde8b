#!/usr/bin/env bash
# Builds the portal: the wasm bundle and stylesheet under target/site/pkg, then the server.
#
#   scripts/build.sh [--release]
#
# The wasm half needs the wasm32-unknown-unknown standard library. Where rustup can add
# that target, the rustup toolchain builds it. Otherwise Debian's rustc-web builds the
# standard library from source (rust-web-src), with RUSTC_BOOTSTRAP set for that one
# command only so that the server's build scripts see a stable compiler.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

profile=dev
profile_dir=debug
if [[ "${1:-}" == "--release" ]]; then
    profile=release
    profile_dir=release
fi

target_dir=${CARGO_TARGET_DIR:-$root/target}
site_dir=$target_dir/site
pkg_dir=$site_dir/pkg
mkdir -p "$pkg_dir"

build_wasm() {
    local out=$target_dir/front
    if wasm_target_from_rustup; then
        log "building the wasm bundle with rustup's wasm32-unknown-unknown target"
        cargo build -p frontend --lib --profile wasm-release \
            --target wasm32-unknown-unknown --target-dir "$out"
    else
        log "building the wasm bundle with Debian's rustc-web (standard library from source)"
        env PATH="/usr/bin:$PATH" RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 \
            CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=wasm-ld \
            CARGO_UNSTABLE_BUILD_STD=std,panic_abort \
            /usr/bin/cargo build -p frontend --lib --profile wasm-release \
            --target wasm32-unknown-unknown --target-dir "$out"
    fi
    wasm-bindgen --target web --no-typescript \
        --remove-name-section --remove-producers-section \
        --out-dir "$pkg_dir" --out-name stint \
        "$out/wasm32-unknown-unknown/wasm-release/frontend.wasm"
}

build_wasm
cp style/main.css "$pkg_dir/stint.css"
cp style/favicon.svg "$site_dir/favicon.svg"

# Compressed copies next to each asset: the server sends them to browsers that accept
# gzip or brotli without compressing on every request.
for asset in "$pkg_dir"/stint.js "$pkg_dir"/stint_bg.wasm "$pkg_dir"/stint.css; do
    gzip -9 -k -f "$asset"
    if command -v brotli >/dev/null; then
        brotli -q 11 -k -f "$asset"
    fi
done

log "building the server (profile $profile)"
if [[ $profile == release ]]; then
    cargo build -p server --release
else
    cargo build -p server
fi

raw=$(stat -c %s "$pkg_dir/stint_bg.wasm")
gz=$(stat -c %s "$pkg_dir/stint_bg.wasm.gz")
log "built $target_dir/$profile_dir/stint and $pkg_dir (wasm $((raw / 1024)) KiB, gzip $((gz / 1024)) KiB)"
