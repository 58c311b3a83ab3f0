#!/usr/bin/env bash
# Installs what building and testing keel needs on a fresh Debian/Ubuntu machine: libclang
# (RocksDB's bindings are generated at build time), a C/C++ compiler and make (RocksDB,
# jemalloc), curl and python3 (the scripts) and procps (`kill`, which the cluster tests send
# signals with). Sourced by scripts/run.sh and scripts/test.sh; does nothing when everything
# is there.
need=()
# libclang itself, not libclang-cpp (which some images ship alone and bindgen cannot use).
[[ -n "$(ls /usr/lib/llvm-*/lib/libclang.so* 2>/dev/null)" ]] || need+=(libclang-dev clang)
command -v c++ >/dev/null || need+=(g++)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
[[ -x /bin/kill || -x /usr/bin/kill ]] || need+=(procps)
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
