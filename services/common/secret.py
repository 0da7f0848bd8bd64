"""``RADPIPE_SECRET_KEY`` rules, shared by :class:`~radpipe.common.settings.Settings` and the
offline ``radpipe deid`` tool.

The offline tool reads only this one variable and must start fast (it is benchmarked as a
whole process), so it uses :func:`secret_key_from_environment` instead of loading the full
settings model; both apply :func:`check_secret_key`.

A master secret is refused when it is a placeholder (the development default, the value of
``k8s/base/secret.example.yaml``, anything containing ``change-me``, ``placeholder``,
``example``, ``secret`` ...) or when :func:`estimate_entropy_bits` puts it under
:data:`MIN_ENTROPY_BITS`. ``openssl rand -hex 32`` (256 bits) always passes.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import time
from pathlib import Path

#: The development secret of ``radpipe up``; refused everywhere else.
DEFAULT_SECRET_KEY = "radpipe-insecure-development-key-change-me"

#: What the master secret must carry at least (NIST SP 800-57: a 128-bit security strength).
MIN_ENTROPY_BITS = 128

#: Words that mark a value as a placeholder, compared without case, digits or separators.
PLACEHOLDER_WORDS = (
    "changeme",
    "placeholder",
    "example",
    "secret",
    "password",
    "insecure",
    "replaceme",
)

#: ``radpipe up`` keeps its generated key here, in the data dir (mode 0600).
LOCAL_SECRET_FILE = "secret.key"

_FIX = "generate one with `openssl rand -hex 32`"
_HEX = re.compile(r"[0-9a-fA-F]+")
_BASE64 = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")


def _period(value: str) -> int:
    """The length of the shortest unit ``value`` repeats (its own length when none)."""
    for size in range(1, len(value) // 2 + 1):
        if all(value[i] == value[i - size] for i in range(size, len(value))):
            return size
    return len(value)


def _informative(value: str) -> int:
    """Characters that carry information: one period of a repeated unit, and in it no
    character that repeats the one before or continues a run of +1/-1 steps
    (``aaaa`` counts as one character, ``1234``, ``abcd``, ``9876`` as two), and no
    four characters that already occurred together (a repeated word)."""
    unit = value[: _period(value)]
    count, step, i = 0, None, 0
    while i < len(unit):
        if i >= 4 and unit[i : i + 4] in unit[: i + 3] and len(unit[i : i + 4]) == 4:
            i, step = i + 4, None
            continue
        diff = ord(unit[i]) - ord(unit[i - 1]) if i else None
        i += 1
        if diff == 0 or (diff in (1, -1) and diff == step):
            step = diff
            continue
        count += 1
        step = diff if diff in (1, -1) else None
    return count


def estimate_entropy_bits(value: str) -> float:
    """A conservative estimate of the entropy of a secret, in bits.

    Bits per character by encoding: hex (``openssl rand -hex``) 4; base64 or base64url
    (``openssl rand -base64``, ``secrets.token_urlsafe``), recognized only when upper case,
    lower case and digits all occur, 6; anything else log2 of the smaller of the character
    classes present (26 lower, 26 upper, 10 digits, 33 other) and the number of distinct
    characters. Multiplied by :func:`_informative`'s count: repeated units, repeated
    characters, ascending or descending runs and repeated words add nothing.
    """
    if not value:
        return 0.0
    count = _informative(value.rstrip("="))
    if _HEX.fullmatch(value):
        return 4.0 * count
    classes = (
        any(c.islower() for c in value),
        any(c.isupper() for c in value),
        any(c.isdigit() for c in value),
    )
    if _BASE64.fullmatch(value) and all(classes):
        return 6.0 * count
    pool = 26 * classes[0] + 26 * classes[1] + 10 * classes[2]
    pool += 33 * any(not c.isascii() or not c.isalnum() for c in value)
    return count * math.log2(max(2, min(pool, len(set(value)))))


def check_secret_key(value: str, name: str = "RADPIPE_SECRET_KEY") -> None:
    """Raise ``ValueError`` naming the fix when ``value`` may not key real data."""
    if value == DEFAULT_SECRET_KEY:
        raise ValueError(
            f"{name} is the development default; set it to a long random value "
            "(e.g. `openssl rand -hex 32`) or use `radpipe up` for a local trial"
        )
    folded = re.sub(r"[^a-z]", "", value.lower())
    for word in PLACEHOLDER_WORDS:
        if word in folded:
            raise ValueError(f"{name} looks like a placeholder (it contains {word!r}); {_FIX}")
    bits = estimate_entropy_bits(value)
    if bits < MIN_ENTROPY_BITS:
        raise ValueError(
            f"{name} is too weak: about {bits:.0f} bits of entropy, at least "
            f"{MIN_ENTROPY_BITS} needed (64 hex characters give 256); {_FIX}"
        )


def secret_key_from_environment() -> bytes:
    """The key from ``RADPIPE_SECRET_KEY`` (checked), for tools that need nothing else."""
    value = os.environ.get("RADPIPE_SECRET_KEY", "") or DEFAULT_SECRET_KEY
    check_secret_key(value)
    return value.encode()


def local_secret(data_dir: Path) -> str:
    """The key ``radpipe up`` keeps in its data dir, created (random, mode 0600) on first
    use: the all-in-one mode never keys data with :data:`DEFAULT_SECRET_KEY`."""
    path = data_dir / LOCAL_SECRET_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process of the same stack made it first
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
    for _ in range(100):  # another process may have created it and not written it yet
        value = path.read_text().strip()
        if value:
            return value
        time.sleep(0.01)
    raise ValueError(f"{path} is empty: delete it to have a new key generated")
