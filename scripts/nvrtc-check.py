#!/usr/bin/env python3
"""Compile every kernels/*.cu with NVRTC exactly as cord does at run time (no headers, arch
sm_90; cord_kernels::cuda::compile_ptx), without a GPU: NVRTC is a host library. Prints the PTX version
and target of each result and exits 1 on a compile error (with NVRTC's log).

    python3 scripts/nvrtc-check.py [LIBNVRTC]   # default: libnvrtc.so.13 from LIBRARY_PATH /
                                                # LD_LIBRARY_PATH (scripts/cuda-toolchain.sh --env)
"""
import ctypes
import glob
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_nvrtc():
    if len(sys.argv) > 1:
        return sys.argv[1]
    for var in ("LIBRARY_PATH", "LD_LIBRARY_PATH", "CUDA_ROOT"):
        for d in os.environ.get(var, "").split(":"):
            for cand in (d, os.path.join(d, "lib")):
                hits = sorted(glob.glob(os.path.join(cand, "libnvrtc.so.1[0-9]*")))
                if hits:
                    return hits[0]
    return "libnvrtc.so.13"


def main():
    path = find_nvrtc()
    # NVRTC dlopens libnvrtc-builtins by soname; load it first from the same directory so that
    # no LD_LIBRARY_PATH is needed.
    for b in sorted(glob.glob(os.path.join(os.path.dirname(path), "libnvrtc-builtins.so.*"))):
        ctypes.CDLL(b, mode=ctypes.RTLD_GLOBAL)
        break
    lib = ctypes.CDLL(path)
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    print(f"NVRTC {major.value}.{minor.value}")
    failed = 0
    for path in sorted(glob.glob(os.path.join(ROOT, "kernels", "*.cu"))):
        src = open(path, "rb").read()
        prog = ctypes.c_void_p()
        rc = lib.nvrtcCreateProgram(ctypes.byref(prog), src, os.path.basename(path).encode(), 0, None, None)
        if rc != 0:
            print(f"{path}: nvrtcCreateProgram failed ({rc})")
            failed += 1
            continue
        opts = [b"--gpu-architecture=sm_90"]
        arr = (ctypes.c_char_p * len(opts))(*opts)
        rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        if rc != 0:
            print(f"{os.path.relpath(path, ROOT)}: NVRTC error {rc}\n{log.value.decode(errors='replace')}")
            failed += 1
            continue
        lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
        ptx = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetPTX(prog, ptx)
        text = ptx.value.decode()
        version = re.search(r"^\.version (\S+)", text, re.M)
        target = re.search(r"^\.target (\S+)", text, re.M)
        entries = re.findall(r"\.visible \.entry (\w+)", text)
        print(
            f"{os.path.relpath(path, ROOT)}: ok (PTX {version.group(1) if version else '?'}, "
            f"{target.group(1) if target else '?'}, entries: {', '.join(entries)})"
        )
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
