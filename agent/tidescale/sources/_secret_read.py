"""Reading one secret the agent's hints name: an environment variable or a file (bounded).

Used by the sources' I/O modules each time they sign or log in, so a rotated Secret (a mounted
file) or a renewed token is picked up at the next request. Errors name the variable or the file,
never a value. The waker never gets here: its guard clears every ``*-env``/``*-file`` field and
hands the source a ``Credentials`` instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from tidescale.errors import BrokerAuthFailed

__all__ = ["MAX_SECRET_FILE_BYTES", "read_secret"]

MAX_SECRET_FILE_BYTES = 16 << 10
"""Most bytes read of a secret file: keys, tokens and connection strings are far smaller."""


def read_secret(env: str | None, file: str | None) -> str | None:
    """The value (whitespace trimmed) of ``env`` when given, else of ``file``; None when neither is."""
    if env is not None:
        value = os.environ.get(env)
        if value is None:
            raise BrokerAuthFailed(
                f"the environment variable {env} (named by a *-env hint) is not set in the agent"
            )
        return value.strip()
    if file is None:
        return None
    try:
        with Path(file).open("rb") as handle:
            raw = handle.read(MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        raise BrokerAuthFailed(f"cannot read the credential file {file}: {exc.strerror}") from exc
    if len(raw) > MAX_SECRET_FILE_BYTES:
        raise BrokerAuthFailed(f"the credential file {file} is larger than {MAX_SECRET_FILE_BYTES >> 10} KiB")
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise BrokerAuthFailed(f"the credential file {file} is not UTF-8 text") from exc
