"""Write files so that a kill mid-write never leaves a half-written file behind.

Everything the toolkit writes (checkpoints, grids, arrays, JSON, NIR files,
caches) goes to a temporary file in the destination folder and is renamed
into place in one step.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path


def _umask_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yields a temporary path beside `path`; renames it onto `path` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _umask_mode())  # mkstemp makes files private; the user's umask decides
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# atomic_path's temporary names: ".NAME.XXXXXXXX.SUFFIX" (mkstemp's 8 random
# characters; SUFFIX: NAME's own suffix, if any).
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}(?P<suffix>\.[^.]*)?$")


def is_temp_name(name: str) -> bool:
    """Whether `name` is one of atomic_path's temporary file names."""
    m = _TEMP_NAME.match(name)
    return bool(m) and (m["suffix"] or "") == Path(m["name"]).suffix


def remove_stray_temps(folder: str | os.PathLike) -> list[Path]:
    """Removes the temporary files a killed atomic write left in `folder` (only
    names of atomic_path's own pattern); returns them. Call it only while no
    other process writes there (e.g. holding the run folder's lock)."""
    removed = []
    for p in sorted(Path(folder).iterdir()):
        if is_temp_name(p.name) and p.is_file() and not p.is_symlink():
            try:
                p.unlink()
                removed.append(p)
            except FileNotFoundError:
                pass
    return removed


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
