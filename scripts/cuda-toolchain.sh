#!/usr/bin/env bash
# Install a CUDA 13.0 build toolchain from PyPI (no GPU, no root, no system CUDA needed) so that
# `cargo check/build --features cuda` works on a plain Linux host. Recipe: docs/engine-notes.md §2.5
# (nvcc/nvvm/nvrtc/runtime/cublas/cccl/crt pinned to 13.0.*, unversioned .so links, and a
# `libcuda.so` *link* stub generated from cudarc's driver bindings).
#
# Usage:
#   scripts/cuda-toolchain.sh            install if missing (a no-op when present), then print the
#                                        export lines
#   scripts/cuda-toolchain.sh --env      print only the export lines on stdout (installs first if
#                                        missing; install progress goes to stderr), for
#                                        eval "$(scripts/cuda-toolchain.sh --env)"
#   scripts/cuda-toolchain.sh --check    exit 0 if the toolchain is installed and complete, else 1
#   scripts/cuda-toolchain.sh --reinstall   remove and reinstall the toolchain
#
# Location: $CORD_CUDA_HOME (default ~/.cache/cord/cuda), outside the repository.
#
# The stub libcuda.so (soname libcuda.so.1) exists only so executables link; it is never named
# libcuda.so.1, so the dynamic loader never picks it up. On a GPU host the driver's libcuda.so.1
# is used. Do not ship it. Running a cuda build on a GPU host additionally needs the toolkit
# libraries (libcudart.so.13, libcublas*.so.13, libcurand.so.10, libnvrtc.so.13) on
# LD_LIBRARY_PATH, e.g. the lib/ directory printed as LIBRARY_PATH here.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CORD_CUDA_HOME="${CORD_CUDA_HOME:-$HOME/.cache/cord/cuda}"
VENV="$CORD_CUDA_HOME/venv"
MARKER="$CORD_CUDA_HOME/.installed"
COMPUTE_CAP=90
CUDARC_CUDA_VERSION_PIN=13000

# Bump RECIPE_ID whenever the package list changes, so existing installs are redone.
RECIPE_ID="cuda-13.0-pypi-v1"
PACKAGES=(
  "nvidia-cuda-nvcc==13.0.*"
  "nvidia-nvvm==13.0.*"
  "nvidia-cuda-runtime==13.0.*"
  "nvidia-cublas==13.0.*"
  "nvidia-curand"
  "nvidia-cuda-nvrtc==13.0.*"
  "nvidia-cuda-cccl==13.0.*"
  "nvidia-cuda-crt==13.0.*"
)

mode=install
case "${1:-}" in
  "") ;;
  --env) mode=env ;;
  --check) mode=check ;;
  --reinstall) mode=reinstall ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "cuda-toolchain.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
esac

log() { printf 'cuda-toolchain: %s\n' "$*" >&2; }

# The cudarc version the workspace resolves to (its driver bindings define the stub's symbols).
cudarc_version() {
  awk '/^name = "cudarc"$/ { getline; gsub(/version = |"/, ""); print; exit }' "$REPO_ROOT/Cargo.lock"
}

cuda_root() { cat "$CORD_CUDA_HOME/cuda_root" 2>/dev/null; }

# Complete = recipe marker matches, nvcc/ptxas/cicc present, and a stub built from this
# workspace's cudarc version.
is_complete() {
  local c
  c="$(cuda_root)" || return 1
  [[ -n "$c" ]] || return 1
  [[ "$(cat "$MARKER" 2>/dev/null)" == "$RECIPE_ID" ]] || return 1
  [[ -x "$c/bin/nvcc" && -x "$c/bin/ptxas" && -x "$c/nvvm/bin/cicc" ]] || return 1
  for l in libcublas.so libcublasLt.so libcudart.so libcurand.so libnvrtc.so libcuda.so; do
    [[ -e "$c/lib/$l" ]] || return 1
  done
  [[ "$(cat "$c/lib/.libcuda-stub-cudarc" 2>/dev/null)" == "$(cudarc_version)" ]] || return 1
}

install_toolkit() {
  rm -rf "$VENV" "$MARKER" "$CORD_CUDA_HOME/cuda_root"
  log "creating venv in $VENV"
  python3 -m venv "$VENV"
  log "installing ${PACKAGES[*]} (about 1.2 GB)"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input "${PACKAGES[@]}" >&2
  local c
  c="$("$VENV/bin/python" -c "import os, nvidia; print(os.path.join(nvidia.__path__[0], 'cu13'))")"
  [[ -x "$c/bin/nvcc" ]] || { log "nvcc not found under $c"; exit 1; }
  # The wheels ship only versioned sonames; the linker wants unversioned names.
  local pairs=(libcublas.so:libcublas.so.13 libcublasLt.so:libcublasLt.so.13
    libcudart.so:libcudart.so.13 libcurand.so:libcurand.so.10 libnvrtc.so:libnvrtc.so.13)
  for p in "${pairs[@]}"; do
    [[ -e "$c/lib/${p#*:}" ]] || { log "missing $c/lib/${p#*:}"; exit 1; }
    ln -sfn "${p#*:}" "$c/lib/${p%%:*}"
  done
  printf '%s\n' "$c" > "$CORD_CUDA_HOME/cuda_root"
  "$VENV/bin/pip" freeze 2>/dev/null | grep '^nvidia-' | sed 's/^/  /' >&2 || true
}

# libcuda.so link stub: soname libcuda.so.1, one dummy definition per cu* driver entry point of
# cudarc's bindings. Never create libcuda.so.1.
build_stub() {
  local c ver reg sys src
  c="$(cuda_root)"
  ver="$(cudarc_version)"
  [[ -n "$ver" ]] || { log "cudarc not found in $REPO_ROOT/Cargo.lock"; exit 1; }
  reg="${CARGO_HOME:-$HOME/.cargo}/registry/src"
  sys="$(find "$reg" -mindepth 2 -maxdepth 2 -type d -name "cudarc-$ver" -print -quit 2>/dev/null || true)/src/driver/sys/mod.rs"
  # (Not `ls glob | head`: under `set -o pipefail` a missing directory ended the script here,
  # before the fetch below, on a machine whose cargo registry had no cudarc yet.)
  if [[ ! -f "$sys" ]]; then
    log "cudarc-$ver sources not in the cargo registry; running cargo fetch"
    (cd "$REPO_ROOT" && { cargo fetch --locked >&2 || cargo fetch >&2; })
    sys="$(find "$reg" -mindepth 2 -maxdepth 2 -type d -name "cudarc-$ver" -print -quit 2>/dev/null || true)/src/driver/sys/mod.rs"
  fi
  [[ -f "$sys" ]] || { log "cannot find cudarc-$ver/src/driver/sys/mod.rs under $reg"; exit 1; }
  src="$(mktemp --suffix=.c)"
  grep -oE 'pub unsafe fn cu[A-Za-z0-9_]+' "$sys" | awk '{print $4}' | sort -u \
    | awk '{print "int " $1 "(void) { return 999; }"}' > "$src"
  local n
  n="$(wc -l < "$src")"
  [[ "$n" -gt 100 ]] || { rm -f "$src"; log "only $n driver symbols found in $sys"; exit 1; }
  rm -f "$c/lib/libcuda.so.1"  # must never exist: the loader would pick the stub over the driver
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$c/lib/libcuda.so.tmp" "$src"
  mv -f "$c/lib/libcuda.so.tmp" "$c/lib/libcuda.so"
  rm -f "$src"
  printf '%s\n' "$ver" > "$c/lib/.libcuda-stub-cudarc"
  log "libcuda.so link stub: $n symbols from cudarc-$ver"
}

ensure_installed() {
  [[ "$mode" != reinstall ]] && is_complete && return 0
  mkdir -p "$CORD_CUDA_HOME"
  # Serialise concurrent installs (e.g. CI and a developer shell).
  exec 9>"$CORD_CUDA_HOME/.lock"
  flock 9
  if [[ "$mode" == reinstall ]]; then rm -f "$MARKER"; fi
  if ! is_complete; then
    local t0=$SECONDS
    if [[ "$(cat "$MARKER" 2>/dev/null)" != "$RECIPE_ID" || -z "$(cuda_root)" || ! -x "$(cuda_root)/bin/nvcc" ]]; then
      install_toolkit
    else
      # Only the symlinks or the stub are missing/stale.
      rm -f "$MARKER"
      local c; c="$(cuda_root)"
      ln -sfn libcublas.so.13 "$c/lib/libcublas.so"; ln -sfn libcublasLt.so.13 "$c/lib/libcublasLt.so"
      ln -sfn libcudart.so.13 "$c/lib/libcudart.so"; ln -sfn libcurand.so.10 "$c/lib/libcurand.so"
      ln -sfn libnvrtc.so.13 "$c/lib/libnvrtc.so"
    fi
    build_stub
    printf '%s\n' "$RECIPE_ID" > "$MARKER"
    is_complete || { log "install finished but the toolchain is incomplete"; exit 1; }
    log "installed in $((SECONDS - t0))s: $("$(cuda_root)/bin/nvcc" --version | tail -2 | head -1)"
  fi
  flock -u 9
}

# Prints the export lines, with the variables fully expanded. PATH/LIBRARY_PATH are prepended to
# the caller's values unless already present, so repeated evals do not grow them.
print_env() {
  local c path lib
  c="$(cuda_root)"
  path="$PATH"
  case ":$path:" in *":$c/bin:"*) ;; *) path="$c/bin${path:+:$path}" ;; esac
  lib="${LIBRARY_PATH:-}"
  case ":$lib:" in *":$c/lib:"*) ;; *) lib="$c/lib${lib:+:$lib}" ;; esac
  printf 'export PATH=%q\n' "$path"
  printf 'export CUDA_ROOT=%q\n' "$c"
  printf 'export CUDA_PATH=%q\n' "$c"
  printf 'export LIBRARY_PATH=%q\n' "$lib"
  printf 'export CUDA_COMPUTE_CAP=%q\n' "$COMPUTE_CAP"
  printf 'export CUDARC_CUDA_VERSION=%q\n' "$CUDARC_CUDA_VERSION_PIN"
}

case "$mode" in
  check)
    if is_complete; then log "ok: $(cuda_root)"; exit 0; else log "not installed (or incomplete) in $CORD_CUDA_HOME"; exit 1; fi ;;
  env)
    ensure_installed
    print_env ;;
  install|reinstall)
    ensure_installed
    log "toolchain ready: $(cuda_root)"
    log "use it with: eval \"\$(scripts/cuda-toolchain.sh --env)\""
    print_env ;;
esac
