#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer's coverage instrumentation on the stable toolchain (the
# flags cargo-fuzz passes, without a sanitizer, which would need nightly), then runs each for
# FUZZ_SECONDS (default 20) on the seed corpus: a smoke run, not a campaign.
set -euo pipefail
cd "$(dirname "$0")"
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
  -Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
# An explicit --target keeps RUSTFLAGS off build scripts and proc macros (as cargo-fuzz does).
host=$(rustc -vV | sed -n 's/^host: //p')
cargo build --release --locked --bins --target "$host"
seconds="${FUZZ_SECONDS:-20}"
corpus=$(mktemp -d)
for f in ../testdata/ltx-litestream-0.5.17/replica/ltx/*/*.ltx; do
  cp "$f" "$corpus/$(basename "$(dirname "$f")")-$(basename "$f")"
done
"target/$host/release/ltx_decode" -max_total_time="$seconds" -max_len=65536 "$corpus"
