#!/usr/bin/env bash
# Builds the Rust extension of THIS checkout in place (python/ckptio/_core.abi3.so),
# without pip or maturin, so several checkouts (git worktrees) can share one venv:
#   dev/build-ext.sh [--features EXTRA] && PYTHONPATH=$PWD/python python -m pytest tests
# Thin LTO and parallel codegen keep rebuilds quick; release wheels use the full
# profile of Cargo.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
features="python,pyo3/extension-module"
if [ "${1:-}" = "--features" ]; then features="$features,$2"; fi
CARGO_PROFILE_RELEASE_LTO=thin CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    cargo build --release --lib --features "$features" --message-format=short
# Copy, then rename: overwriting the file in place would corrupt the mapping of any
# process that has the old build loaded (it segfaults).
cp target/release/libckptio.so python/ckptio/.core.abi3.so.new
mv -f python/ckptio/.core.abi3.so.new python/ckptio/_core.abi3.so
echo "built python/ckptio/_core.abi3.so ($features)"
