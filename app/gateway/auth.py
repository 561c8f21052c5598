"""API keys: only SHA-256 digests are stored, in a mounted Secret file and/or a Redis hash.

File format, one key per line ('#' starts a comment):

    <key-id> <sha256 hex of the key> [rpm=N] [tpm=N] [models=name1,name2]
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("gateway")

_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    digest: str
    rpm: int | None = None
    tpm: int | None = None
    models: frozenset[str] | None = None

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models


class KeyFileError(ValueError):
    pass


def digest_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_entry(key_id: str, digest: str, options: list[str], where: str) -> ApiKey:
    if not _KEY_ID.fullmatch(key_id):
        raise KeyFileError(f"{where}: key id {key_id!r} must be 1-64 of A-Z a-z 0-9 . _ -")
    digest = digest.lower()
    if not _HEX.fullmatch(digest):
        raise KeyFileError(f"{where}: second field must be the 64-hex-digit sha256 of the key")
    values: dict[str, object] = {}
    for opt in options:
        name, sep, value = opt.partition("=")
        if name in ("rpm", "tpm") and sep and value.isdigit():
            values[name] = int(value)
        elif name == "models" and sep and value:
            values["models"] = frozenset(v for v in value.split(",") if v)
        else:
            raise KeyFileError(f"{where}: unknown option {opt!r} (expected rpm=N, tpm=N or models=a,b)")
    return ApiKey(key_id, digest, **values)  # type: ignore[arg-type]


def load_key_file(path: Path) -> dict[str, ApiKey]:
    keys: dict[str, ApiKey] = {}
    try:
        text = path.read_text()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read ({exc.strerror})") from None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        where = f"{path}:{lineno}"
        if len(fields) < 2:
            raise KeyFileError(f"{where}: expected '<key-id> <sha256 hex> [options]'")
        entry = parse_entry(fields[0], fields[1], fields[2:], where)
        keys[entry.digest] = entry
    return keys


class KeyStore:
    """Looks keys up by digest; the file is re-read when it changes (Kubernetes updates Secrets in place)."""

    _RELOAD_CHECK_S = 5.0
    _CACHE_TTL_S = 30.0
    _CACHE_MAX = 10_000

    def __init__(self, path: Path | None, redis: Redis | None, redis_hash: str | None) -> None:
        self._path = path
        self._redis = redis
        self._hash = redis_hash
        self._by_digest: dict[str, ApiKey] = {}
        self._mtime = 0.0
        self._checked = 0.0
        self._cache: OrderedDict[str, tuple[float, ApiKey | None]] = OrderedDict()
        if path is not None:
            self._by_digest = load_key_file(path)
            self._mtime = os.stat(path).st_mtime

    def _maybe_reload(self, now: float) -> None:
        if self._path is None or now - self._checked < self._RELOAD_CHECK_S:
            return
        self._checked = now
        try:
            mtime = os.stat(self._path).st_mtime
            if mtime != self._mtime:
                self._by_digest = load_key_file(self._path)
                self._mtime = mtime
                log.info("api keys reloaded", extra={"keys": len(self._by_digest)})
        except (OSError, KeyFileError) as exc:
            # Keep serving with the keys we have rather than locking everyone out.
            log.error("api key file reload failed; keeping previous keys", extra={"error": str(exc)})

    async def lookup(self, presented: str) -> ApiKey | None:
        now = time.monotonic()
        self._maybe_reload(now)
        # The table is keyed by digest, so lookup timing depends only on a hash of the secret;
        # the final comparison is still constant-time.
        digest = digest_of(presented)
        entry = self._by_digest.get(digest)
        if entry is None and self._redis is not None and self._hash:
            entry = await self._lookup_redis(digest, now)
        if entry is not None and hmac.compare_digest(entry.digest, digest):
            return entry
        return None

    async def _lookup_redis(self, digest: str, now: float) -> ApiKey | None:
        cached = self._cache.get(digest)
        if cached is not None and now - cached[0] < self._CACHE_TTL_S:
            return cached[1]
        try:
            value = await self._redis.hget(self._hash, digest)  # type: ignore[union-attr]
        except (RedisError, OSError):
            return cached[1] if cached else None
        entry = None
        if value:
            fields = value.decode().split() if isinstance(value, bytes) else str(value).split()
            try:
                entry = parse_entry(fields[0], digest, fields[1:], f"redis hash {self._hash}")
            except (KeyFileError, IndexError):
                log.error("malformed api key entry in redis", extra={"hash": self._hash})
        self._cache[digest] = (now, entry)
        self._cache.move_to_end(digest)
        while len(self._cache) > self._CACHE_MAX:
            self._cache.popitem(last=False)
        return entry
