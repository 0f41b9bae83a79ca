"""PII redaction of the curate command: a table of positive and negative cases, redacted exactly."""

from __future__ import annotations

import pytest

from megatron_llm.data.curate.stages.pii import PiiParams, PiiRedactor, PiiStage, luhn_ok

CASES = [
    # e-mail addresses
    ("Contact john.doe@example.com today", "Contact <EMAIL_ADDRESS> today", {"email": 1}),
    ("Write to first.last+tag@mail.example.co.uk.", "Write to <EMAIL_ADDRESS>.", {"email": 1}),
    ("a@b.de, x_y@sub-domain.org", "<EMAIL_ADDRESS>, <EMAIL_ADDRESS>", {"email": 2}),
    ("icon@2x.png is an image file name", "icon@2x.png is an image file name", {}),
    ("user@localhost has no domain", "user@localhost has no domain", {}),
    ("@property and foo@bar and x @ y.com", "@property and foo@bar and x @ y.com", {}),
    ("version 1.0@beta", "version 1.0@beta", {}),
    # IP addresses: public ones only
    ("server 8.8.8.8 responded", "server <IP_ADDRESS> responded", {"ip_address": 1}),
    ("from 93.184.216.34:443 ok", "from <IP_ADDRESS>:443 ok", {"ip_address": 1}),
    ("private 192.168.1.10, 10.0.0.1, 172.16.5.4", "private 192.168.1.10, 10.0.0.1, 172.16.5.4", {}),
    ("loopback 127.0.0.1 and link-local 169.254.1.1", "loopback 127.0.0.1 and link-local 169.254.1.1", {}),
    ("documentation range 203.0.113.7", "documentation range 203.0.113.7", {}),
    ("not an address 256.1.1.1 or 1.2.3", "not an address 256.1.1.1 or 1.2.3", {}),
    ("version 1.2.3.4.5 of the tool", "version 1.2.3.4.5 of the tool", {}),
    ("ipv6 2606:4700:4700::1111 public", "ipv6 <IP_ADDRESS> public", {"ip_address": 1}),
    ("ipv6 2001:db8::1 doc, fe80::1 link, ::1 loop", "ipv6 2001:db8::1 doc, fe80::1 link, ::1 loop", {}),
    ("fd12:3456:789a::1 unique-local", "fd12:3456:789a::1 unique-local", {}),
    ("C++ std::vector and a::b and dead::beef", "C++ std::vector and a::b and dead::beef", {}),
    ("at 12:30:45 sharp", "at 12:30:45 sharp", {}),
    # payment cards: Luhn and issuer prefix
    ("card 4111 1111 1111 1111 ok", "card <CREDIT_CARD_NUMBER> ok", {"credit_card": 1}),
    ("card 5500-0000-0000-0004.", "card <CREDIT_CARD_NUMBER>.", {"credit_card": 1}),
    ("amex 378282246310005", "amex <CREDIT_CARD_NUMBER>", {"credit_card": 1}),
    ("fails Luhn 4111 1111 1111 1112", "fails Luhn 4111 1111 1111 1112", {}),
    ("no issuer 1234 5678 9012 3452", "no issuer 1234 5678 9012 3452", {}),
    ("mixed separators 4111 1111-1111 1111", "mixed separators 4111 1111-1111 1111", {}),
    ("order id 12345678901234567890123", "order id 12345678901234567890123", {}),
    # phone numbers
    ("call (555) 123-4567 now", "call <PHONE_NUMBER> now", {"phone_number": 1}),
    ("or 555-123-4567 or 555.123.4567", "or <PHONE_NUMBER> or <PHONE_NUMBER>", {"phone_number": 2}),
    ("London +44 20 7946 0958", "London <PHONE_NUMBER>", {"phone_number": 1}),
    ("US +1-202-555-0143.", "US <PHONE_NUMBER>.", {"phone_number": 1}),
    ("date 2021-05-06, ISBN 978-3-16-148410-0", "date 2021-05-06, ISBN 978-3-16-148410-0", {}),
    ("ssn-like 123-45-6789 and pi 3.14159", "ssn-like 123-45-6789 and pi 3.14159", {}),
    ("1,000,000 people and 12345678", "1,000,000 people and 12345678", {}),
]


@pytest.mark.parametrize(("text", "expected", "counts"), CASES)
def test_redaction_table(text, expected, counts):
    assert PiiRedactor(PiiParams()).redact(text) == (expected, counts)


def test_luhn():
    assert luhn_ok("79927398713")
    assert not luhn_ok("79927398710")


def test_types_can_be_switched_off_and_placeholders_changed():
    params = PiiParams(phone_number=False, placeholders={"email": "[email]"})
    text = "mail a@example.com or call 555-123-4567 from 8.8.8.8"
    assert PiiRedactor(params).redact(text) == (
        "mail [email] or call 555-123-4567 from <IP_ADDRESS>",
        {"email": 1, "ip_address": 1},
    )


def test_stage_counts_redactions_and_never_removes():
    stage = PiiStage("pii", PiiParams())
    assert stage.process("a@example.com and b@example.com", {}) == ("<EMAIL_ADDRESS> and <EMAIL_ADDRESS>", None)
    assert stage.process("nothing here", {}) == ("nothing here", None)
    assert stage.counters == {"email": 2, "documents_redacted": 1}
