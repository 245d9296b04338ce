"""The Realtime API key: from systemd credentials or the environment, never from the TOML.

Order: ``$CREDENTIALS_DIRECTORY/voxbox-api-key`` (systemd ``LoadCredential=``), then the
environment variable ``VOXBOX_API_KEY``. The key is wrapped in :class:`Secret` so that it
cannot reach a log by accident: its ``str``/``repr`` are redacted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CREDENTIAL_NAME = "voxbox-api-key"
ENV_VAR = "VOXBOX_API_KEY"


class CredentialError(RuntimeError):
    """No usable API key was found. The message says where Voxbox looked."""


@dataclass(frozen=True)
class Secret:
    """A secret string whose ``str`` and ``repr`` never show the value."""

    value: str = ""
    source: str = ""

    def __repr__(self) -> str:
        return f"Secret(<redacted>, source={self.source!r})"

    __str__ = __repr__


def load_api_key(environ: dict[str, str] | None = None, required: bool = True) -> Secret:
    """Find the API key.

    Args:
        environ: the environment to read (defaults to ``os.environ``).
        required: when False, a missing key returns an empty :class:`Secret`.

    Raises:
        CredentialError: no key, an empty key file, or an unreadable credential file.
    """
    env = os.environ if environ is None else environ
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    looked = []
    if cred_dir:
        path = Path(cred_dir) / CREDENTIAL_NAME
        looked.append(str(path))
        try:
            value = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            value = None
        except OSError as exc:
            raise CredentialError(f"cannot read credential {path}: {exc.strerror}") from None
        if value is not None:
            if not value:
                raise CredentialError(f"credential {path} is empty")
            return Secret(value, f"credential:{CREDENTIAL_NAME}")
    looked.append(f"${ENV_VAR}")
    value = env.get(ENV_VAR, "").strip()
    if value:
        return Secret(value, f"env:{ENV_VAR}")
    if not required:
        return Secret("", "none")
    raise CredentialError(
        "no Realtime API key: set LoadCredential=" + CREDENTIAL_NAME + ":<file> in the unit or "
        f"the environment variable {ENV_VAR} (looked in: {', '.join(looked)})"
    )
