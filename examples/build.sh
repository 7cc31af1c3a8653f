#!/usr/bin/env bash
# Builds the guest programs in guests/ for wasm32-wasip1 (core modules) and
# wasm32-wasip2 (components) and copies them to wasm/<name>.p1.wasm and
# wasm/<name>.p2.wasm, which the example pods and the test suite use.
#
# Each member crate of the guests workspace must build one binary named like
# its directory. Works from any working directory.
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

cargo build --release --manifest-path "$guests/Cargo.toml" --target-dir "$guests/target" \
    "${targets[@]/#/--target=}"

mkdir -p "$out"
for manifest in "$guests"/*/Cargo.toml; do
    name="$(basename "$(dirname "$manifest")")"
    for target in "${targets[@]}"; do
        dest="$out/$name.${target#wasm32-wasi}.wasm"
        cp "$guests/target/$target/release/$name.wasm" "$dest"
        printf '%9d  %s\n' "$(wc -c <"$dest")" "${dest#"$here"/}"
    done
done
