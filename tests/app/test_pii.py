"""The log redactor: each kind of personal data is caught, and its near misses are left alone."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from app.gateway.logging import JsonFormatter
from app.gateway.pii import Redactor, iban_valid, luhn
from app.gateway.settings import GatewaySettings, describe_error

redact = Redactor({"us_ssn": r"\b\d{3}-\d{2}-\d{4}\b"})


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("write to jane.doe+llm@example.co.uk today", "write to [email] today"),
        ("card 4111 1111 1111 1111 expires", "card [card] expires"),
        ("card 4111-1111-1111-1111", "card [card]"),
        ("amex 378282246310005", "amex [card]"),
        ("iban GB82 WEST 1234 5698 7654 32 ok", "iban [iban] ok"),
        ("iban DE89370400440532013000", "iban [iban]"),
        ("call +44 20 7946 0958 now", "call [phone] now"),
        ("call (555) 123-4567", "call [phone]"),
        ("call 555-123-4567", "call [phone]"),
        ("ssn 123-45-6789", "ssn [us_ssn]"),
    ],
)
def test_each_kind_is_redacted(text, want):
    assert redact(text) == want


@pytest.mark.parametrize(
    "text",
    [
        "order 4111 1111 1111 1112",  # fails Luhn: not a card
        "GB82 WEST 1234 5698 7654 33",  # fails mod 97: not an IBAN
        "request 2026-12-08 at 10:15:00",  # a date and a time
        "version 1.2.3 on 10.0.0.5:8000",  # a version and an address
        "user@localhost",  # no domain
        "took 1234567 ms for 42 tokens",  # a plain number
        "seq 123-456",  # too few digits for a phone
    ],
)
def test_near_misses_are_left_alone(text):
    assert redact(text) == text


def test_the_checksums():
    assert luhn("4111111111111111") and not luhn("4111111111111112")
    assert iban_valid("GB82WEST12345698765432") and not iban_valid("GB82WEST12345698765433")


@given(st.integers(10**12, 10**19 - 1))
def test_a_number_is_redacted_as_a_card_exactly_when_luhn_holds(n):
    digits = str(n)
    out = Redactor()(f"x {digits} y")
    assert (out == "x [card] y") == luhn(digits) or out == "x [phone] y"


def test_log_lines_pass_the_redactor():
    formatter = JsonFormatter({"us_ssn": r"\b\d{3}-\d{2}-\d{4}\b"})
    record = logging.makeLogRecord(
        {"msg": "upstream said: bad input from a@b.io", "upstream": "call 555-123-4567", "count": 3}
    )
    line = json.loads(formatter.format(record))
    assert line["msg"] == "upstream said: bad input from [email]"
    assert line["upstream"] == "call [phone]" and line["count"] == 3


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            '{"us_ssn": "(unclosed"}',
            'GATEWAY_PII_PATTERNS=\'{"us_ssn": "(unclosed"}\': us_ssn: not a regular expression',
        ),
        ('{"Bad Name": "x"}', "GATEWAY_PII_PATTERNS='{\"Bad Name\": \"x\"}': 'Bad Name' is not a name like us_ssn"),
        ("not json", "GATEWAY_PII_PATTERNS='not json': not JSON"),
    ],
)
def test_bad_patterns_fail_at_start_with_one_line(value, message, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("")
    with pytest.raises(ValidationError) as err:
        GatewaySettings(upstreams="http://r:1", api_keys_file=str(keys), pii_patterns=value)
    assert describe_error(err.value).startswith(message), describe_error(err.value)
