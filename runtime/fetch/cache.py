"""The cache: one directory per URI + revision, present only once complete (download to a temp dir, verify, rename),
and a file lock so that concurrent pulls of one entry download it once."""

from __future__ import annotations

import shutil
from pathlib import Path

from filelock import FileLock

from infleet.api.models import entry_name
from infleet.runtime.fetch.errors import FetchError, from_os_error
from infleet.runtime.fetch.progress import Progress
from infleet.runtime.fetch.stores import download


def pull(uri: str, cache: Path, revision: str | None = None) -> Path:
    """Return the local directory holding the model at `uri`, downloading it first unless the cache has it."""
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / entry_name(uri, revision)
    with FileLock(str(final) + ".lock"):
        if final.is_dir():
            return final
        # one temp dir per entry: what a killed pull left is removed here, under the lock, never renamed into place
        tmp = cache / f".partial-{final.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        progress = Progress(tmp)
        progress.start()
        try:
            download(uri, revision, tmp, progress.expect)
            tmp.rename(final)
        except FetchError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise from_os_error(err) from err
        finally:
            progress.stop()
    return final
