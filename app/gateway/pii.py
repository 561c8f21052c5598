"""Personal data out of what the gateway logs: emails, phone numbers, card numbers (Luhn-checked),
IBANs (mod-97-checked) and national id formats from config, each replaced by `[<kind>]`.

A maintained recognizer (Microsoft Presidio) needs a spaCy language model from a hub, which this
project does not load at run time; these patterns and checks are small enough to hold here, each
tested with its near misses (tests/app/test_pii.py). The checksums keep order numbers, dates and
ids that merely look like a card or an IBAN from being redacted.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# 13 to 19 digits, optionally grouped by single spaces or dashes.
_CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])")
# An international number (+ and 8 to 15 digits), or a national one with an area code in
# parentheses or grouped by separators: 10 to 15 digits in all.
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(?\d{1,4}\)?[ .-]?){1,4}\d{2,4}|\(\d{2,4}\)[ .-]?\d{3,4}[ .-]?\d{3,4}"
    r"|\d{3}[ .-]\d{3}[ .-]\d{4})(?![\w])"
)


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(text: str) -> bool:
    compact = text.replace(" ", "")
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


class Redactor:
    def __init__(self, national_ids: Mapping[str, str] | None = None) -> None:
        """`national_ids`: name -> regular expression (GATEWAY_PII_PATTERNS), e.g. {"us_ssn": ...}."""
        self._extra = [(name, re.compile(p)) for name, p in (national_ids or {}).items()]

    def __call__(self, text: str) -> str:
        if not text:
            return text
        text = _EMAIL.sub("[email]", text)
        text = _IBAN.sub(_if(lambda m: iban_valid(m), "[iban]"), text)
        text = _CARD.sub(_if(lambda m: luhn(_digits(m)), "[card]"), text)
        text = _PHONE.sub(_if(lambda m: 8 <= len(_digits(m)) <= 15, "[phone]"), text)
        for name, pattern in self._extra:
            text = pattern.sub(f"[{name}]", text)
        return text


def _if(check: Callable[[str], bool], label: str) -> Callable[[re.Match[str]], str]:
    return lambda m: label if check(m.group(0)) else m.group(0)


def compile_patterns(patterns: Mapping[str, str]) -> None:
    """Raises ValueError naming the first pattern that is not a regular expression."""
    for name, pattern in patterns.items():
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", name):
            raise ValueError(f"{name!r} is not a name like us_ssn (a-z 0-9 _)")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{name}: not a regular expression ({exc})") from None
