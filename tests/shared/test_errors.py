"""`describe`: an exception as a log line reads it."""

from shared.errors import describe


def test_an_exception_with_a_message_reads_as_its_message():
    assert describe(ValueError("engine e1 not found")) == "engine e1 not found"


def test_an_exception_without_a_message_reads_as_its_type():
    assert describe(TimeoutError()) == "TimeoutError"
    assert describe(RuntimeError("")) == "RuntimeError"
