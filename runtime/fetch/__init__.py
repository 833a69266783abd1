"""The model fetcher: pulls a model from hf://, s3://, gs:// or https:// into a cache, atomically and verified.

Torch-free: it runs as the runtime pod's init container before the runtime loads anything."""

from infleet.runtime.fetch.cache import pull
from infleet.runtime.fetch.errors import FetchError, Reason

__all__ = ["FetchError", "Reason", "pull"]
