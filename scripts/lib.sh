# Helpers shared by the project's scripts. Source it; it defines functions only.

log() {
    printf '\033[1m[stint]\033[0m %s\n' "$*" >&2
}

die() {
    printf '\033[1;31m[stint] error:\033[0m %s\n' "$*" >&2
    exit 1
}

# Whether rustup's toolchain has, or can add, the wasm32-unknown-unknown target.
# STINT_WASM_TOOLCHAIN=debian skips rustup and uses Debian's rustc-web.
wasm_target_from_rustup() {
    [[ ${STINT_WASM_TOOLCHAIN:-} != debian ]] || return 1
    command -v rustup >/dev/null || return 1
    if rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
        return 0
    fi
    rustup target add wasm32-unknown-unknown >/dev/null 2>&1
}
