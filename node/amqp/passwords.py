"""Password hashes in RabbitMQ's stored form, so users move between RabbitMQ and RaftMQ
(definitions export/import) unchanged.

RabbitMQ's internal backend stores ``base64(salt + H(salt + password))`` with a
4-byte random salt, H named by the user's ``hashing_algorithm``:
``rabbit_password_hashing_sha256`` (the default), ``_sha512`` or ``_md5``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

SHA256 = "rabbit_password_hashing_sha256"
SHA512 = "rabbit_password_hashing_sha512"
MD5 = "rabbit_password_hashing_md5"
_HASHES = {SHA256: hashlib.sha256, SHA512: hashlib.sha512, MD5: hashlib.md5}
ALGORITHMS = tuple(_HASHES)


def hash_password(password: str, algorithm: str = SHA256, salt: bytes | None = None) -> str:
    h = _HASHES[algorithm]
    salt = os.urandom(4) if salt is None else salt
    return base64.b64encode(salt + h(salt + password.encode("utf-8")).digest()).decode()


def verify(password: str, stored: str, algorithm: str) -> bool:
    """``password`` against a stored hash; False for an empty or malformed hash (a user
    without a password cannot log in with one)."""
    h = _HASHES.get(algorithm)
    if h is None or not stored:
        return False
    try:
        raw = base64.b64decode(stored, validate=True)
    except (binascii.Error, ValueError):
        return False
    size = h().digest_size
    if len(raw) != 4 + size:
        return False
    salt, digest = raw[:4], raw[4:]
    return hmac.compare_digest(h(salt + password.encode("utf-8")).digest(), digest)


def valid_hash(stored: str, algorithm: str) -> bool:
    """Whether ``stored`` has the shape of a hash of ``algorithm`` ("" = no password)."""
    if algorithm not in _HASHES:
        return False
    if stored == "":
        return True
    try:
        raw = base64.b64decode(stored, validate=True)
    except (binascii.Error, ValueError):
        return False
    return len(raw) == 4 + _HASHES[algorithm]().digest_size
