"""The host's limits for a shared demo, read from the environment (one place, documented in the README).

| Environment variable                 | Default                            | What it bounds                     |
|--------------------------------------|------------------------------------|------------------------------------|
| ``TRANSFER_STUDIO_MAX_UPLOAD_MB``    | 500 (and ``server.maxUploadSize``) | one uploaded file                  |
| ``TRANSFER_STUDIO_DISK_QUOTA_MB``    | 10240                              | kept uploads, extracted datasets   |
| ``TRANSFER_STUDIO_MAX_ACTIVE_JOBS``  | 2                                  | queued or running jobs per visitor |
| ``TRANSFER_STUDIO_DECODE_MEMORY_MB`` | available memory / 8, 128 to 512   | images being decoded at once       |
| ``TRANSFER_STUDIO_ZIP_MAX_RATIO``    | 200                                | a zip entry's expansion (100: all) |
| ``TRANSFER_STUDIO_ADMIN_KEY``        | unset                              | the key that controls every run    |
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

MB = 1024 * 1024


def _int_env(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a whole number; set it to a number such as {default}.") from None
    if value < minimum:
        raise ValueError(f"{name}={value} is below {minimum}; set it to at least {minimum}.")
    return value


@functools.cache
def default_decode_memory_mb() -> int:
    """An eighth of the memory available when first asked, kept between 128 and 512 MB (fixed for the process,
    so every decoding thread shares one budget)."""
    import psutil

    return int(min(512, max(128, psutil.virtual_memory().available / MB / 8)))


@dataclass(frozen=True)
class Limits:
    max_upload_mb: int = 500
    disk_quota_mb: int = 10240
    max_active_jobs: int = 2
    decode_memory_mb: int = 512
    zip_max_ratio: int = 200
    zip_max_total_ratio: int = 100
    admin_key: str | None = None

    @classmethod
    def from_env(cls) -> Limits:
        """The limits in effect (environment variables override the defaults).

        Raises:
            ValueError: a setting is not a positive whole number, naming it.
        """
        ratio = _int_env("TRANSFER_STUDIO_ZIP_MAX_RATIO", 200, 2)
        return cls(
            max_upload_mb=_int_env("TRANSFER_STUDIO_MAX_UPLOAD_MB", 500),
            disk_quota_mb=_int_env("TRANSFER_STUDIO_DISK_QUOTA_MB", 10240),
            max_active_jobs=_int_env("TRANSFER_STUDIO_MAX_ACTIVE_JOBS", 2),
            decode_memory_mb=_int_env("TRANSFER_STUDIO_DECODE_MEMORY_MB", 0, 0) or default_decode_memory_mb(),
            zip_max_ratio=ratio,
            zip_max_total_ratio=max(2, ratio // 2),
            admin_key=os.environ.get("TRANSFER_STUDIO_ADMIN_KEY") or None,
        )
