"""Encryption at rest (AES-256-GCM) and the MAC keys derived from the emulator's key.

A stored value is ``version (1) | key id (4) | nonce (12) | ciphertext+tag``: a fresh random
96-bit nonce per write, and associated data that binds the value to its purpose and to the
(connector, user) row it belongs to, so a value copied into another row fails to decrypt.

Where the key comes from, first match wins:

1. ``--key-file F``: one key per line (base64 of 32 bytes) or exactly 32 raw bytes.
2. The environment variable ``AGENTSPACE_EMULATOR_KEY``: base64 keys separated by commas.
3. ``<data dir>/key``: generated on first use; created exclusively (written to a private
   temporary file, then hard-linked into place), so processes that share the directory agree.

With several keys the first encrypts and all decrypt: a key rotation keeps old rows readable
(they are re-encrypted with the new key on their next write).

A key file must belong to the user running the emulator and give no access to group or others
(mode 0600 or stricter); any other is refused, so a key that others can read or replace is
never used.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import secrets
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_ENV: Final = "AGENTSPACE_EMULATOR_KEY"
KEY_FILE_NAME: Final = "key"
_VERSION: Final = b"\x01"
_NONCE_BYTES: Final = 12
_KEY_BYTES: Final = 32


class KeyMaterialError(ValueError):
    """A key could not be loaded (the message names the source, never the key)."""


class DecryptionError(Exception):
    """A stored value could not be decrypted: wrong key, wrong row, or tampering."""


def _key_id(key: bytes) -> bytes:
    return hashlib.sha256(b"agentspace-grpc key id\0" + key).digest()[:4]


def _frame(*parts: str) -> bytes:
    """Unambiguous encoding of several strings (length-prefixed)."""
    out = bytearray()
    for part in parts:
        raw = part.encode()
        out += len(raw).to_bytes(4, "big") + raw
    return bytes(out)


class Keyring:
    """The current key (encrypts) and older keys (decrypt only)."""

    __slots__ = ("_aead", "_current", "_mac_root")

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise KeyMaterialError("a keyring needs at least one key")
        for key in keys:
            if len(key) != _KEY_BYTES:
                raise KeyMaterialError(f"an emulator key is {_KEY_BYTES} bytes, not {len(key)}")
        self._current = _key_id(keys[0])
        self._aead: dict[bytes, AESGCM] = {}
        for key in keys:
            self._aead.setdefault(_key_id(key), AESGCM(key))
        self._mac_root = hmac.new(keys[0], b"agentspace-grpc mac root", hashlib.sha256).digest()

    def __repr__(self) -> str:
        return f"Keyring(current={self._current.hex()}, keys={len(self._aead)})"

    def encrypt(self, plaintext: str, *, purpose: str, connector: str, user: str) -> bytes:
        """Encrypts ``plaintext`` for one purpose and one (connector, user) row."""
        nonce = secrets.token_bytes(_NONCE_BYTES)
        aad = _frame(purpose, connector, user)
        sealed = self._aead[self._current].encrypt(nonce, plaintext.encode(), aad)
        return _VERSION + self._current + nonce + sealed

    def decrypt(self, blob: bytes, *, purpose: str, connector: str, user: str) -> str:
        """Decrypts a value written by :meth:`encrypt` for the same purpose and row."""
        if len(blob) < 1 + 4 + _NONCE_BYTES + 16 or blob[:1] != _VERSION:
            raise DecryptionError(f"stored {purpose} value has an unknown format")
        key_id = blob[1:5]
        aead = self._aead.get(key_id)
        if aead is None:
            raise DecryptionError(
                f"stored {purpose} value was encrypted with key {key_id.hex()}, which this "
                "emulator does not have (add the old key after the new one in the key file)"
            )
        nonce = blob[5 : 5 + _NONCE_BYTES]
        try:
            plain = aead.decrypt(nonce, blob[5 + _NONCE_BYTES :], _frame(purpose, connector, user))
        except InvalidTag:
            raise DecryptionError(
                f"stored {purpose} value for this (connector, user) failed authentication "
                "(moved from another row, or tampered with)"
            ) from None
        return plain.decode()

    def mac_key(self, purpose: str) -> bytes:
        """A key for HMACs, derived from the current key and separated by purpose."""
        return hmac.new(self._mac_root, purpose.encode(), hashlib.sha256).digest()


def _parse_keys(text: str, source: str) -> list[bytes]:
    keys: list[bytes] = []
    for item in text.replace(",", "\n").split():
        try:
            key = base64.b64decode(item + "=" * (-len(item) % 4), altchars=b"-_", validate=False)
        except (binascii.Error, ValueError):
            raise KeyMaterialError(f"{source}: a key is not valid base64") from None
        if len(key) != _KEY_BYTES:
            raise KeyMaterialError(
                f"{source}: a key must decode to {_KEY_BYTES} bytes, not {len(key)}"
            )
        keys.append(key)
    if not keys:
        raise KeyMaterialError(f"{source}: no key found")
    return keys


def _read_private(path: Path) -> bytes:
    """The bytes of ``path``, if the file is this user's and private (checked on the open file)."""
    try:
        with path.open("rb") as handle:
            info = os.fstat(handle.fileno())
            if info.st_uid != os.getuid():
                raise KeyMaterialError(
                    f"key file {path} belongs to uid {info.st_uid}, not to this user "
                    f"(uid {os.getuid()}): refusing a key that someone else controls"
                )
            if info.st_mode & 0o077:
                raise KeyMaterialError(
                    f"key file {path} is open to group or others (mode "
                    f"{stat.S_IMODE(info.st_mode):04o}): run chmod 600 on it"
                )
            return handle.read()
    except OSError as exc:
        raise KeyMaterialError(f"cannot read key file {path}: {exc.strerror}") from None


def _read_key_file(path: Path) -> list[bytes]:
    raw = _read_private(path)
    if len(raw) == _KEY_BYTES:
        try:
            return _parse_keys(raw.decode("ascii"), str(path))
        except (UnicodeDecodeError, KeyMaterialError):
            return [raw]
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise KeyMaterialError(f"key file {path}: expected base64 lines or 32 raw bytes") from None
    return _parse_keys(text, f"key file {path}")


def new_key_text() -> str:
    """A fresh key, base64-encoded (what the key file holds)."""
    return base64.b64encode(secrets.token_bytes(_KEY_BYTES)).decode()


def _generated_key(data_dir: Path) -> list[bytes]:
    """The data directory's key, created exclusively on first use."""
    path = data_dir / KEY_FILE_NAME
    if not path.exists():
        tmp = data_dir / f".key.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, (new_key_text() + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # atomic and exclusive: the first process wins
        except FileExistsError:
            pass
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    return _read_key_file(path)


def load_keyring(
    data_dir: Path, key_file: str | os.PathLike[str] | None, environ: Mapping[str, str]
) -> Keyring:
    """The keyring from the key file, the environment, or the data directory (in that order)."""
    if key_file is not None:
        return Keyring(_read_key_file(Path(key_file)))
    text = environ.get(KEY_ENV, "").strip()
    if text:
        return Keyring(_parse_keys(text, f"environment variable {KEY_ENV}"))
    return Keyring(_generated_key(data_dir))
