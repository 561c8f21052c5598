"""API key records and the key file format.

One key per line ('#' starts a comment); only the SHA-256 digest of a key is ever stored:

    <key-id> <sha256 hex of the key> [rpm=N] [tpm=N] [models=name1,name2] [tier=NAME] [ttft_budget_ms=N]

`tier` is what routing rules match on (hybrid.py); `ttft_budget_ms` is the key's time-to-first-
token budget, past which a request goes to a hosted provider rather than wait (a request's
`x-ttft-budget-ms` header overrides it).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HEX = re.compile(r"[0-9a-f]{64}")
_TIER = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    digest: str
    rpm: int | None = None
    tpm: int | None = None
    models: frozenset[str] | None = None
    tier: str | None = None
    ttft_budget_ms: int | None = None

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
    numbers: dict[str, int] = {}
    models: frozenset[str] | None = None
    tier: str | None = None
    for opt in options:
        name, sep, value = opt.partition("=")
        if name in ("rpm", "tpm", "ttft_budget_ms") and sep and value.isdigit():
            numbers[name] = int(value)
        elif name == "models" and sep and value:
            models = frozenset(v for v in value.split(",") if v)
        elif name == "tier" and sep and _TIER.fullmatch(value):
            tier = value
        else:
            raise KeyFileError(
                f"{where}: unknown option {opt!r} "
                "(expected rpm=N, tpm=N, models=a,b, tier=name (a-z 0-9 _ -) or ttft_budget_ms=N)"
            )
    if numbers.get("ttft_budget_ms") == 0:
        raise KeyFileError(f"{where}: ttft_budget_ms must be at least 1")
    return ApiKey(
        key_id,
        digest,
        rpm=numbers.get("rpm"),
        tpm=numbers.get("tpm"),
        models=models,
        tier=tier,
        ttft_budget_ms=numbers.get("ttft_budget_ms"),
    )


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
