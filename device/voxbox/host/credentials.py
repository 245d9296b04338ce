"""The Realtime API key: from systemd credentials or the environment, never from the TOML.

Order: ``$CREDENTIALS_DIRECTORY/voxbox-api-key`` (systemd ``LoadCredential=``), then the
environment variable ``VOXBOX_API_KEY``. The key is wrapped in :class:`Secret` so that it
cannot reach a log by accident: its ``str``/``repr`` are redacted.

A key is one line of printable characters: leading and trailing whitespace (the newline
at the end of a key file) is stripped; a line break, a control or invisible format
character, whitespace inside the key or bytes that are not UTF-8 are refused
(:class:`CredentialInvalid`, naming where the key came from, never the key), since such
a key cannot authenticate and would only be retried for ever.
"""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from voxbox.errors import CredentialError, CredentialInvalid, CredentialUnreadable  # noqa: F401 (re-exported)

CREDENTIAL_NAME = "voxbox-api-key"
ENV_VAR = "VOXBOX_API_KEY"


def check_secret_value(value: str) -> str | None:
    """Why ``value`` (already stripped) cannot be sent as a credential, or None when it
    can. The answer names the kind of character at fault, never the value or its position.
    """
    for c in value:
        if c in "\r\n":
            return "contains a line break (CR or LF)"
        cat = unicodedata.category(c)
        if cat == "Cc":
            return "contains a control character"
        if cat == "Cs":
            return "contains bytes that are not valid UTF-8"
        if cat == "Cf":
            return "contains an invisible format character (such as a byte-order mark or zero-width space)"
        if c.isspace():
            return "contains whitespace"
    return None


def _checked(value: str, source: str, what: str) -> str:
    problem = check_secret_value(value)
    if problem:
        raise CredentialInvalid(source, f"the {what} {problem}; a key is one line of printable "
                                        "characters without spaces: write it again (a trailing "
                                        "newline is fine)")
    return value


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
        CredentialInvalid: the value found is malformed (:func:`check_secret_value`), or
            the file is not UTF-8 text: always, ``required`` or not. The message names the
            credential and its file, or the environment variable.
        CredentialUnreadable: the credential file exists but cannot be read (always).
        CredentialError: none found (when ``required``), an empty credential file; the
            message says where Voxbox looked.
    """
    env = os.environ if environ is None else environ
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    looked = []
    if cred_dir:
        path = Path(cred_dir) / name
        looked.append(str(path))
        source = f"credential {name} ({path})"
        try:
            value = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            value = None
        except UnicodeDecodeError:
            raise CredentialInvalid(source, f"the {what} is not UTF-8 text") from None
        except OSError as exc:
            raise CredentialUnreadable(path, exc.strerror or str(exc)) from None
        if value is not None:
            if not value:
                raise CredentialError(f"credential {path} is empty")
            return Secret(_checked(value, source, what), f"credential:{name}")
    looked.append(f"${env_var}")
    value = env.get(env_var, "").strip()
    if value:
        return Secret(_checked(value, f"environment variable {env_var}", what), f"env:{env_var}")
    if not required:
        return Secret("", "none")
    raise CredentialError(
        f"no {what}: set LoadCredential={name}:<file> in the unit or the environment variable "
        f"{env_var} (looked in: {', '.join(looked)})"
    )


def load_api_key(environ: dict[str, str] | None = None, required: bool = True) -> Secret:
    """The Realtime API key (credential ``voxbox-api-key``, env ``VOXBOX_API_KEY``).

    Raises:
        CredentialError: see :func:`load_credential` (a malformed key is
            :class:`CredentialInvalid`).
    """
    return load_credential(CREDENTIAL_NAME, ENV_VAR, "Realtime API key", environ, required)
