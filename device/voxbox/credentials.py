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


def load_credential(name: str, env_var: str, what: str, environ: dict[str, str] | None = None,
                    required: bool = True) -> Secret:
    """A secret from ``$CREDENTIALS_DIRECTORY/<name>`` (systemd ``LoadCredential=``), else
    from the environment variable ``env_var``.

    Args:
        what: how the error names the secret (e.g. "Realtime API key").
        required: when False, a missing secret returns an empty :class:`Secret`.

    Raises:
        CredentialError: none found (when ``required``), an empty or unreadable credential
            file; the message says where Voxbox looked.
    """
    env = os.environ if environ is None else environ
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    looked = []
    if cred_dir:
        path = Path(cred_dir) / name
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
            return Secret(value, f"credential:{name}")
    looked.append(f"${env_var}")
    value = env.get(env_var, "").strip()
    if value:
        return Secret(value, f"env:{env_var}")
    if not required:
        return Secret("", "none")
    raise CredentialError(
        f"no {what}: set LoadCredential={name}:<file> in the unit or the environment variable "
        f"{env_var} (looked in: {', '.join(looked)})"
    )


def load_api_key(environ: dict[str, str] | None = None, required: bool = True) -> Secret:
    """The Realtime API key (credential ``voxbox-api-key``, env ``VOXBOX_API_KEY``).

    Raises:
        CredentialError: see :func:`load_credential`.
    """
    return load_credential(CREDENTIAL_NAME, ENV_VAR, "Realtime API key", environ, required)
