"""Start-up checks of the token keys: a serving process refuses the built-in development key and short keys.

Why here and not in settings validation: the refusal belongs to starting a process (`hotpath api`), so tests and
tools that build an app or settings directly keep working with whatever keys they choose.
"""

from __future__ import annotations

from hotpath.settings import DEV_JWT_SECRET

MIN_KEY_BYTES = 32  # HS256: RFC 7518 §3.2 wants a key at least as long as the hash output


class InsecureKeys(Exception):
    """The configured keys would let anyone mint tokens; the message is one line naming what to set."""


def check_jwt_keys(jwt_keys: dict[str, str], *, allow_dev_key: bool) -> None:
    """Raise InsecureKeys if a key is the development key (unless allowed) or shorter than MIN_KEY_BYTES."""
    for kid, secret in jwt_keys.items():
        if secret == DEV_JWT_SECRET:
            if allow_dev_key:
                continue
            raise InsecureKeys(
                "refusing to start with the built-in development JWT key (published in the source): set "
                "HOTPATH_JWT_KEYS='{\"<kid>\": \"<32+ random bytes>\"}', or HOTPATH_ALLOW_DEV_KEY=true for a local experiment"
            )
        if len(secret.encode()) < MIN_KEY_BYTES:
            raise InsecureKeys(
                f"refusing to start: HOTPATH_JWT_KEYS key {kid!r} is {len(secret.encode())} bytes; "
                f"HS256 keys must be at least {MIN_KEY_BYTES} bytes (e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)"
            )
