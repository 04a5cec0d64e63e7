"""Atomic file writes: a crash never leaves a partial file under a final name."""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it into place on success.

    The temporary name keeps the final suffixes (so writers that look at the
    extension, like nibabel, behave) and is removed if the block raises.
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name.split('.')[0]}.",
                                   suffix="".join(final.suffixes), dir=final.parent)
    except OSError as err:
        raise _storage_error(err, final) from err
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, final)
    except OSError as err:
        tmp_path.unlink(missing_ok=True)
        raise _storage_error(err, final) from err
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _storage_error(err: OSError, final: Path) -> OSError | Exception:
    """A clear error for the user when the disk is full or not writable."""
    from harmonize_bids.exceptions import OutputError, StorageError

    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(f"No space left on the device (or quota exceeded) while writing "
                            f"{final}; free some space and rerun (finished steps are kept)")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"Cannot write {final}: {err.strerror}")
    return err


def check_writable(folder: Path, min_free_mb: int) -> None:
    """Create ``folder`` if needed and check it is writable with ``min_free_mb`` free.

    Raises :class:`~harmonize_bids.exceptions.OutputError` (73) or
    :class:`~harmonize_bids.exceptions.StorageError` (74) before any work starts.
    """
    from harmonize_bids.exceptions import OutputError, StorageError

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_test."):
            pass
    except OSError as err:
        exc = _storage_error(err, folder)
        if isinstance(exc, (OutputError, StorageError)):
            raise exc from err
        raise OutputError(f"Cannot write to {folder}: {err.strerror}") from err
    free_mb = shutil.disk_usage(folder).free / 2**20
    if free_mb < min_free_mb:
        raise StorageError(f"Only {free_mb:.0f} MB free in {folder}; harmonize_bids needs at "
                           f"least {min_free_mb} MB there for this run")


def atomic_copy(src: Path, final: Path) -> Path:
    """Copy ``src`` to ``final`` atomically."""
    with atomic_path(final) as tmp:
        shutil.copyfile(src, tmp)
    return Path(final)


def atomic_write_text(text: str, final: Path) -> Path:
    """Write text to ``final`` atomically."""
    with atomic_path(final) as tmp:
        tmp.write_text(text)
    return Path(final)


def atomic_write_json(data: dict[str, Any], final: Path) -> Path:
    """Write a JSON object (sorted keys, indented) to ``final`` atomically."""
    return atomic_write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", final)
