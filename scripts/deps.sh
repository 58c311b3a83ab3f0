#!/usr/bin/env bash
# Installs what building keel needs on a fresh Debian/Ubuntu machine: libclang (RocksDB's
# bindings are generated at build time), make (jemalloc) and curl (the scripts' HTTP client). Sourced by
# scripts/run.sh and scripts/test.sh; does nothing when everything is there.
need=()
# libclang itself, not libclang-cpp (which some images ship alone and bindgen cannot use).
[[ -n "$(ls /usr/lib/llvm-*/lib/libclang.so* 2>/dev/null)" ]] || need+=(libclang-dev clang)
command -v curl >/dev/null || need+=(curl)
# jemalloc (keel's allocator) is built from source with make.
command -v make >/dev/null || need+=(make)
if ((${#need[@]})); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing build dependencies: ${need[*]} (install them, e.g. sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keel-target}"
