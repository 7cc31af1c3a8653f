#!/usr/bin/env bash
# Builds the guest programs in guests/ and the toolbox (../toolbox) for
# wasm32-wasip1 (core modules) and wasm32-wasip2 (components) and copies them to
# wasm/<name>.p1.wasm and wasm/<name>.p2.wasm, which the example pods and the
# test suite use.
#
# Each member crate of the guests workspace must build one binary named like
# its directory, or one cdylib (src/lib.rs; cargo names its file with `_` for
# `-`, e.g. http_hello.wasm). A crate that only makes sense on one target (the
# socket and wasi:http guests need preview 2) says so in its Cargo.toml, on a
# line of its own, and gets only that .wasm:
#
#     [package.metadata.wasmpod]
#     targets = ["wasm32-wasip2"]
#
# Works from any working directory.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
guests="$here/guests"
out="$here/wasm"
targets=(wasm32-wasip1 wasm32-wasip2)

installed="$(rustup target list --installed)"
for target in "${targets[@]}"; do
    if ! grep -qx "$target" <<<"$installed"; then
        rustup target add "$target"
    fi
done

# The targets a member crate is built for: its `targets = [...]` line, or all.
crate_targets() {
    local line
    line="$(grep -E '^targets[[:space:]]*=' "$1" || true)"
    if [[ -n "$line" ]]; then
        grep -oE 'wasm32-wasip[12]' <<<"$line"
    else
        printf '%s\n' "${targets[@]}"
    fi
}

# One cargo run per target, with the members that want it.
for target in "${targets[@]}"; do
    packages=()
    for manifest in "$guests"/*/Cargo.toml; do
        if crate_targets "$manifest" | grep -qx "$target"; then
            packages+=(--package "$(basename "$(dirname "$manifest")")")
        fi
    done
    cargo build --release --manifest-path "$guests/Cargo.toml" --target-dir "$guests/target" \
        --target "$target" "${packages[@]}"
done

mkdir -p "$out"
for manifest in "$guests"/*/Cargo.toml; do
    dir="$(dirname "$manifest")"
    name="$(basename "$dir")"
    artifact="$name"
    if [[ -f "$dir/src/lib.rs" ]]; then
        artifact="${name//-/_}"
    fi
    for target in $(crate_targets "$manifest"); do
        dest="$out/$name.${target#wasm32-wasi}.wasm"
        cp "$guests/target/$target/release/$artifact.wasm" "$dest"
        printf '%9d  %s\n' "$(wc -c <"$dest")" "${dest#"$here"/}"
    done
done

# The toolbox (../toolbox, a member of the main workspace): a multi-call program for the test
# images (sh, echo, cat, ls, top, …). The preview1 build reports exit codes exactly; the
# preview2 one has sockets (httpd). Its own target directory and size-minded profile keep
# the host builds of the workspace untouched.
root="$(dirname "$here")"
for target in "${targets[@]}"; do
    cargo build --release --manifest-path "$root/Cargo.toml" -p wasmpod-toolbox \
        --target "$target" --target-dir "$root/toolbox/target" \
        --config 'profile.release.opt-level="s"' --config profile.release.lto=true \
        --config profile.release.codegen-units=1
    dest="$out/toolbox.${target#wasm32-wasi}.wasm"
    cp "$root/toolbox/target/$target/release/toolbox.wasm" "$dest"
    printf '%9d  %s\n' "$(wc -c <"$dest")" "${dest#"$here"/}"
done
