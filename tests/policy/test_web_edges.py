"""What the gateway's refusals say, and origins it cannot read (pure, no I/O).

Complements test_web.py with the exact messages (what the operator reads), their bounds on
untrusted text, and writes without a `Host` or with an unparsable `Origin` (found by `make mutate`).
"""

from shared.policy.web import allowed_hosts, check_request

DEFAULT = allowed_hosts((), "127.0.0.1")
JSON = "application/json"


def test_a_refused_host_is_told_the_names_we_answer_to_sorted_and_comma_separated():
    refusal = check_request("GET", "evil.example:8000", None, None, False, DEFAULT)
    assert refusal.status == 421
    assert refusal.message == (
        "this gateway does not answer to host 'evil.example'; "
        "add it to GATEWAY_ALLOWED_HOSTS (now 127.0.0.1, ::1, localhost) if it is really ours"
    )


def test_a_cross_origin_refusal_quotes_at_most_100_characters_of_the_origin():
    origin = "http://" + "a" * 93 + "TAIL-NOT-QUOTED"  # the first 100 characters end just before TAIL
    refusal = check_request("POST", "127.0.0.1:8000", origin, JSON, True, DEFAULT)
    assert refusal.status == 403
    assert refusal.message == f"cross-origin write refused: Origin {origin[:100]!r} is not this gateway"
    assert "T" not in refusal.message.partition("Origin ")[2].partition(" is not")[0]


def test_a_body_without_a_content_type_is_refused_saying_none_was_given():
    refusal = check_request("POST", "127.0.0.1:8000", None, None, True, DEFAULT)
    assert (refusal.status, refusal.message) == (
        415,
        "writes must be sent as Content-Type: application/json (got none)",
    )


def test_a_refused_content_type_is_quoted_up_to_100_characters():
    content_type = "text/" + "p" * 95 + "LEFT-OUT"
    refusal = check_request("POST", "127.0.0.1:8000", None, content_type, True, DEFAULT)
    assert refusal.message == f"writes must be sent as Content-Type: application/json (got {'text/' + 'p' * 95})"


def test_a_write_with_an_origin_but_no_host_header_is_refused_as_cross_origin():
    # Without Host nothing says which origin is ours (HTTP/1.0); the browser's Origin cannot be trusted.
    refusal = check_request("POST", None, "http://127.0.0.1:8000", JSON, True, DEFAULT)
    assert refusal is not None and refusal.status == 403


def test_an_origin_that_is_not_a_valid_url_is_refused_as_cross_origin():
    for origin in ("http://[::1:8000", "http://[127.0.0.1]:8000"):  # unparsable IPv6 literals
        refusal = check_request("POST", "127.0.0.1:8000", origin, JSON, True, DEFAULT)
        assert refusal is not None and refusal.status == 403, origin
