"""XLA's persistent compilation cache, on by default for every run.

Compiling is most of a short run's start-up on a CPU (a small UNet's train step: 8-20 s on 2 cores),
and the same programs come back: a resumed or repeated run, and in the pipeline every segmenter of
the same model and shapes (one per regime and seed). JAX stores each compiled program under a key of
its HLO, compile options, devices and versions, so a hit is the program that would be compiled.

``POLYPJAX_COMPILATION_CACHE=DIR`` picks the folder (default ``~/.cache/polypjax/xla``), ``=0`` turns
it off; a ``JAX_COMPILATION_CACHE_DIR`` of your own is left as it is. Programs that compile in under
a second are not stored.
"""
from __future__ import annotations

import logging
import os

from polypjax import cache_dirs

ENV = "POLYPJAX_COMPILATION_CACHE"


def enable() -> str | None:
    """Points JAX at the cache folder (idempotent); the folder in use, or None when off."""
    import jax
    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    if os.environ.get(ENV) == "0":
        return None
    try:
        path = cache_dirs.private_dir(cache_dirs.user_cache_dir(ENV, "xla"), ENV)
    except (cache_dirs.UnsafeCacheDir, OSError) as e:
        logging.warning("compilation cache off: %s", e)
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    return str(path)
