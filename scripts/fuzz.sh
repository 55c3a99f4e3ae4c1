#!/usr/bin/env bash
# Runs the cargo-fuzz targets (fuzz/): signature, envelope, router. Not part of CI (.ci/run):
# the same invariants run as property tests inside `cargo test`.
#
#   scripts/fuzz.sh                 # every target for 600 s each
#   scripts/fuzz.sh router 60       # one target for 60 s
#
# Needs no nightly toolchain: cargo-fuzz's -Z flags are allowed on stable with RUSTC_BOOTSTRAP=1.
# Findings land in fuzz/artifacts/TARGET/ (replay: scripts/fuzz.sh TARGET with the file as
# extra argument to `cargo fuzz run`).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo-fuzz >/dev/null; then
  echo "[fuzz] installing cargo-fuzz" >&2
  cargo install --locked --quiet cargo-fuzz >&2
fi
export RUSTC_BOOTSTRAP=1
targets=(signature envelope router)
secs=${2:-600}
[[ $# -ge 1 && $1 != all ]] && targets=("$1")
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  echo "[fuzz] $t for ${secs}s" >&2
  cargo fuzz run -O "$t" "fuzz/corpus/$t" -- -max_total_time="$secs" -max_len=8192 -print_final_stats=1 "${@:3}"
done
