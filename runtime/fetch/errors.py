"""One exception for every way a pull fails, with the reason the operator shows in status."""

from __future__ import annotations

import errno

from infleet.api.models import Reason


class FetchError(Exception):
    def __init__(self, reason: Reason, message: str) -> None:
        message = " ".join(message.split())  # one line: the termination message and `REASON: message` output
        super().__init__(f"{reason.name}: {message}")
        self.reason = reason
        self.message = message


def from_os_error(err: OSError) -> FetchError:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return FetchError(Reason.DiskFull, str(err))
    return FetchError(Reason.StoreUnreachable, str(err))
