"""Builds ``onednn_conv.cc`` against the oneDNN wheel and registers its handlers as XLA FFI targets.

The library is compiled once per (source, oneDNN, jaxlib, compiler) with the system C++ compiler
into a user cache folder (``$POLYPJAX_NATIVE_CACHE``, else ``$XDG_CACHE_HOME/polypjax/native``),
written under a temporary name and renamed, so concurrent first uses and killed builds never leave
a half-written library behind. Only a library this source built is loaded (a sidecar records its
build key and sha256), and only from a folder owned by the user and not writable by others.
Anything missing (no wheel on this platform, no compiler, a failed build) raises
``NativeUnavailable`` with the reason; ``available()`` turns that into one warning and ``False`` so
callers fall back to XLA's kernels.

Nothing here runs at import: ``polypjax.models.conv`` calls ``load()`` when it first traces a CPU
convolution that may take this path, and ``load()`` logs one line saying what it built or loaded.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import jax

from polypjax import cache_dirs

TARGETS = {
    "forward": "polypjax_onednn_conv_forward",
    "input_grad": "polypjax_onednn_conv_input_grad",
    "kernel_grad": "polypjax_onednn_conv_kernel_grad",
}
_SYMBOLS = {
    "forward": "PolypjaxConvForward",
    "input_grad": "PolypjaxConvInputGrad",
    "kernel_grad": "PolypjaxConvKernelGrad",
}
_SOURCE = Path(__file__).with_name("onednn_conv.cc")
_LIB_DIST, _LIB_FILE = "onednn-cpu-gomp", "lib/libdnnl.so.3"
_INC_DIST, _INC_FILE = "onednn-devel-cpu-gomp", "include/oneapi/dnnl/dnnl.hpp"


class NativeUnavailable(RuntimeError):
    """The oneDNN kernels cannot be built or loaded here; the message says why."""


def _dist_file(dist: str, suffix: str) -> Path:
    try:
        d = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        raise NativeUnavailable(f"the {dist} package is not installed") from None
    for f in d.files or ():
        path = Path(d.locate_file(f)).resolve()  # RECORD lists data files relative to site-packages
        if path.as_posix().endswith("/" + suffix):
            return path
    raise NativeUnavailable(f"the {dist} package has no {suffix}")


def cache_dir() -> Path:
    return cache_dirs.user_cache_dir("POLYPJAX_NATIVE_CACHE", "native")


def build() -> tuple[Path, bool]:
    """(path of the compiled library, whether this call compiled it): compiles it first if this
    version is not cached yet."""
    lib = _dist_file(_LIB_DIST, _LIB_FILE)
    include = _dist_file(_INC_DIST, _INC_FILE).parents[2]
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise NativeUnavailable(f"no C++ compiler ({cxx}) on PATH to build {_SOURCE.name}")
    flags = ["-O2", "-std=c++17", "-shared", "-fPIC", "-w", f"-I{jax.ffi.include_dir()}",
             f"-I{include}", str(_SOURCE), f"-L{lib.parent}", f"-l:{lib.name}",
             f"-Wl,-rpath,{lib.parent}"]
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256("\n".join([_SOURCE.read_text(), *flags, version, jax.__version__,
                                    str(lib.stat().st_size)]).encode()).hexdigest()[:16]
    directory = _safe_cache_dir()
    out = directory / f"polypjax_onednn_{key}.so"
    if out.exists():
        if _verified(out, key):
            return out, False
        logging.warning("%s is not the library this source built (no or a different %s); rebuilding it",
                        out, _sidecar(out).name)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        proc = subprocess.run([cxx, *flags, "-o", tmp], capture_output=True, text=True)
        if proc.returncode != 0:
            raise NativeUnavailable(f"building {_SOURCE.name} failed:\n{proc.stderr[-3000:]}")
        os.replace(tmp, out)
        _write_sidecar(out, key)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out, True


def _safe_cache_dir() -> Path:
    try:
        return cache_dirs.private_dir(cache_dir(), "POLYPJAX_NATIVE_CACHE")
    except cache_dirs.UnsafeCacheDir as e:
        raise NativeUnavailable(str(e)) from None


def _sidecar(lib: Path) -> Path:
    return lib.with_suffix(".sha256")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_sidecar(lib: Path, key: str) -> None:
    fd, tmp = tempfile.mkstemp(suffix=".sha256", dir=lib.parent)
    with os.fdopen(fd, "w") as f:
        f.write(f"{key} {_digest(lib)}\n")
    os.replace(tmp, _sidecar(lib))


def _verified(lib: Path, key: str) -> bool:
    """Whether `lib` is, byte for byte, what this source's build wrote (its sidecar records the build
    key and the library's sha256), and is ours and not writable by others."""
    side = _sidecar(lib)
    try:
        st = lib.stat()
        recorded = side.read_text().split()
    except OSError:
        return False
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        return False
    return recorded == [key, _digest(lib)]


@functools.cache
def load() -> ctypes.CDLL:
    """Builds if needed, loads the library and registers its FFI targets for the CPU (once)."""
    start = time.monotonic()
    path, built = build()
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        raise NativeUnavailable(f"loading the oneDNN kernels failed: {e}") from None
    for op, target in TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, _SYMBOLS[op])),
                                    platform="cpu")
    logging.info("oneDNN convolution kernels %s in %.1f s: %s", "built and loaded" if built else "loaded",
                 time.monotonic() - start, path)
    return lib


@functools.cache
def has_bf16() -> bool:
    """Whether bfloat16 convolutions run natively (AVX512-BF16 or AMX); ``load()`` must succeed."""
    return bool(load().PolypjaxOnednnHasBf16())


@functools.cache
def available() -> bool:
    try:
        load()
    except NativeUnavailable as e:
        logging.warning("oneDNN convolutions unavailable, using XLA's: %s", e)
        return False
    return True
