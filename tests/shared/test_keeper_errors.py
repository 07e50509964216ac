"""How a state-keeper error reply becomes a KeeperError's text and retry hint (shared.keeper_client)."""

from __future__ import annotations

import pytest

from shared.keeper_client import _error_of


@pytest.mark.parametrize(
    ("body", "text", "retry"),
    [
        (b'{"error": "no engine has capacity", "code": 503, "retry_after_s": 2.5}', "no engine has capacity", 2.5),
        (b'{"error": "no capacity", "code": 503, "retry_after_s": 3}', "no capacity", 3.0),
        (b'{"error": "bad request", "code": 400}', "bad request", None),
        (b'{"error": "x", "retry_after_s": "soon"}', "x", None),
        (b'{"error": "x", "retry_after_s": true}', "x", None),
        (b"not json", "not json", None),
        (b"", "error without a body", None),
    ],
)
def test_error_text_and_retry_hint(body, text, retry):
    assert _error_of(body) == (text, retry)
