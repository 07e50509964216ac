"""The index of which engines play which content (for sharing), fed stream records by the view."""

from services.state_keeper.store import ContentIndex
from shared.schemas import StreamRecord


def playing(stream_id: str, content_key: str = "news", container_id: str = "e1") -> StreamRecord:
    return StreamRecord(stream_id=stream_id, container_id=container_id, content_key=content_key, status="started")


def ended(stream_id: str, content_key: str = "news", container_id: str = "e1") -> StreamRecord:
    return StreamRecord(stream_id=stream_id, container_id=container_id, content_key=content_key, status="ended")


def test_an_engine_keeps_sharing_a_channel_while_any_of_its_viewers_remains():
    """Two viewers of `news` on e1; the first leaves: e1 still plays `news` (issue 20, item 2)."""
    index = ContentIndex()
    index.on_change("v1", playing("v1"))
    index.on_change("v2", playing("v2"))
    index.on_change("v1", ended("v1"))
    assert index.playing == {"news": {"e1"}}
    index.on_change("v2", None)  # the record deleted: the last viewer is gone
    assert index.playing == {}


def test_repeated_updates_of_one_stream_count_it_once():
    index = ContentIndex()
    for _ in range(3):  # the view reports each write of the record (stats, a redelivered start)
        index.on_change("v1", playing("v1"))
    index.on_change("v2", playing("v2", container_id="e2"))
    index.on_change("v1", ended("v1"))
    assert index.playing == {"news": {"e2"}}
    index.on_change("v1", ended("v1"))
    assert index.playing == {"news": {"e2"}}


def test_a_stream_that_moves_to_another_engine_moves_in_the_index():
    index = ContentIndex()
    index.on_change("v1", playing("v1"))
    index.on_change("v2", playing("v2"))
    index.on_change("v2", playing("v2", container_id="e2"))
    assert index.playing == {"news": {"e1", "e2"}}
    index.on_change("v1", None)
    assert index.playing == {"news": {"e2"}}
