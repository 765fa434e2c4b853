"""Per-user cache folders for things this process will execute (the native kernels, XLA's compiled
programs): under ``$XDG_CACHE_HOME/polypjax`` (else ``~/.cache/polypjax``) unless an environment
variable names one, and used only when owned by the user and not writable by others, since anyone
who can write there could choose the code that runs."""
from __future__ import annotations

import os
from pathlib import Path


class UnsafeCacheDir(Exception):
    pass


def user_cache_dir(env_var: str, name: str) -> Path:
    if os.environ.get(env_var):
        return Path(os.environ[env_var])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "polypjax" / name


def private_dir(path: Path, env_var: str) -> Path:
    """`path`, created private if missing; UnsafeCacheDir (with the fix) when another user owns it
    or group/others may write into it."""
    path = Path(path)
    if not path.exists():
        path.mkdir(parents=True, mode=0o700, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.getuid():
        raise UnsafeCacheDir(f"refusing the cache {path}: owned by uid {st.st_uid}, not by this user "
                             f"(uid {os.getuid()}); set {env_var} to a folder of your own")
    if st.st_mode & 0o022:
        raise UnsafeCacheDir(f"refusing the cache {path}: writable by group or others "
                             f"(mode {st.st_mode & 0o777:o}); chmod go-w it or set {env_var}")
    return path
