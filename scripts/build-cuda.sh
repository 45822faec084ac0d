#!/usr/bin/env bash
# Builds mnemo with --features cuda on a machine without a GPU or a CUDA install:
# - the CUDA 13.0 compiler (nvcc, nvvm, crt) and the runtime/CCCL headers come from PyPI
#   wheels into .cuda-venv/ (the cu12 nvcc wheel holds only ptxas, so 13.0 it is; cudarc
#   supports up to 13.0), CUDA_COMPUTE_CAP (default 90, Hopper) replaces the GPU query;
# - candle links its CUDA libraries dynamically (libcuda, libcublas, libcurand, ...). The
#   driver library is never in a wheel, so the link uses stubs: the script links once to
#   learn which symbols the binary needs, writes stub libraries with those symbols and the
#   real sonames (libcuda.so.1, libcublas.so.13, ...), and links again. At run time on a
#   GPU machine the dynamic loader binds the real driver and CUDA 13 libraries.
# The binary lands in target/cuda/release/mnemo (the CPU build is untouched).
# Usage: scripts/build-cuda.sh            (make cuda)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.cuda-venv"
pins=(nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
      nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85)
if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv" >&2
fi
if [ ! -f "$venv/.stamp" ] || [ "$0" -nt "$venv/.stamp" ]; then
    "$venv/bin/pip" install -q "${pins[@]}" >&2
    touch "$venv/.stamp"
fi
cuda="$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
export CUDA_HOME="$cuda" CUDA_PATH="$cuda" CUDA_ROOT="$cuda" NVCC="$cuda/bin/nvcc"
export PATH="$cuda/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/cuda}"
nvcc --version | tail -1 >&2
cd "$root"

stubs="$venv/stubs"
mkdir -p "$stubs"
# name  soname-version  symbol prefix
libs=("cuda 1 cu" "cublasLt 13 cublasLt" "cublas 13 cublas" "curand 10 curand" "nvrtc 13 nvrtc")
stub() { # lib, soversion, symbols...
    local lib=$1 ver=$2; shift 2
    { for s in "$@"; do echo "void $s(void) {}"; done; echo "void mnemo_stub_$lib(void) {}"; } |
        gcc -shared -fPIC -Wl,-soname,"lib$lib.so.$ver" -o "$stubs/lib$lib.so" -x c -
}
for l in "${libs[@]}"; do set -- $l; stub "$1" "$2"; done
ln -sf "$cuda/lib/libcudart.so.13" "$stubs/libcudart.so"
link() { cargo rustc --release --features cuda --bin mnemo -- -L "native=$stubs" -C link-arg=-Wl,--error-limit=0; }
# Pass 1: build everything; the link fails on the symbols the stubs lack — collect them.
if ! link 2> "$stubs/link.log"; then
    syms=$(grep -o "undefined symbol: [A-Za-z0-9_]*" "$stubs/link.log" | awk '{print $3}' | sort -u)
    [ -n "$syms" ] || { cat "$stubs/link.log" >&2; exit 1; }
    for l in "${libs[@]}"; do
        set -- $l
        mine=()
        for s in $syms; do
            case "$s" in
                cublasLt*) [ "$1" = cublasLt ] && mine+=("$s") ;;
                cublas*) [ "$1" = cublas ] && mine+=("$s") ;;
                curand*) [ "$1" = curand ] && mine+=("$s") ;;
                nvrtc*) [ "$1" = nvrtc ] && mine+=("$s") ;;
                cu*) [ "$1" = cuda ] && mine+=("$s") ;;
            esac
        done
        stub "$1" "$2" "${mine[@]}"
    done
    # Pass 2: the real link.
    link
fi
echo "built $CARGO_TARGET_DIR/release/mnemo; it needs:" >&2
readelf -d "$CARGO_TARGET_DIR/release/mnemo" | grep NEEDED >&2
