"""The Q&A rules as pure functions, at their boundaries."""

from __future__ import annotations

import pytest

from roomcast.core.errors import ClientError
from roomcast.core.rooms import (
    RoomInfo,
    check_send,
    check_vote,
    iso,
    parse_iso,
    priority,
    state,
)

ROOM = RoomInfo("r", "Room", cooldown_seconds=30)


@pytest.mark.parametrize(
    ("votes", "tier"), [(0, "normal"), (2, "normal"), (3, "medium"), (9, "medium"), (10, "high")]
)
def test_default_tiers(votes: int, tier: str) -> None:
    """3 votes make a message medium priority, 10 make it high."""
    assert priority(votes, ROOM) == tier


def test_custom_thresholds() -> None:
    """Thresholds are per room."""
    room = RoomInfo("r", "R", medium_threshold=1, high_threshold=2)
    assert [priority(v, room) for v in (0, 1, 2)] == ["normal", "medium", "high"]


def _send_error(
    room: RoomInfo, now: int, last: int | None = None, muted: int | None = None
) -> ClientError | None:
    try:
        check_send(room, now_ms=now, last_sent_ms=last, muted_until_ms=muted, is_admin=False)
    except ClientError as exc:
        return exc
    return None


def test_cooldown_boundary() -> None:
    """At T-1 ms a second message is refused with retryAfterMs=1; at T it passes."""
    t0 = 1_000_000
    err = _send_error(ROOM, t0 + 29_999, last=t0)
    assert err is not None
    assert err.code == "cooldown"
    assert err.details == {"retryAfterMs": 1}
    assert _send_error(ROOM, t0 + 30_000, last=t0) is None
    assert _send_error(ROOM, t0, last=None) is None
    assert _send_error(RoomInfo("r", "R"), t0, last=t0) is None  # no slow mode


def test_start_time_boundary() -> None:
    """Before startTime sending is refused with the start time; at startTime it passes."""
    start = parse_iso("2026-11-25T18:00:00Z")
    room = RoomInfo("r", "R", start_time=start)
    err = _send_error(room, start - 1)
    assert err is not None
    assert err.code == "room_not_started"
    assert err.details == {"startTime": "2026-11-25T18:00:00Z"}
    assert _send_error(room, start) is None
    assert state(room, start - 1) == "not_started"
    assert state(room, start) == "open"


def test_closed_room_refuses_send_and_vote() -> None:
    """A closed room is read-only, even before its start time."""
    room = RoomInfo("r", "R", is_open=False, start_time=10**15)
    err = _send_error(room, 0)
    assert err is not None
    assert err.code == "room_closed"
    with pytest.raises(ClientError, match="closed"):
        check_vote(room, now_ms=0, muted_until_ms=None, is_admin=False)
    assert state(room, 0) == "closed"


def test_mute_boundary() -> None:
    """A mute holds until its end, exclusive, for sending and voting."""
    err = _send_error(ROOM, 999, muted=1000)
    assert err is not None
    assert err.code == "muted"
    assert _send_error(ROOM, 1000, muted=1000) is None
    with pytest.raises(ClientError):
        check_vote(ROOM, now_ms=999, muted_until_ms=1000, is_admin=False)
    check_vote(ROOM, now_ms=1000, muted_until_ms=1000, is_admin=False)


def test_admins_are_exempt() -> None:
    """Admins may send in closed, unstarted rooms, during cooldown and mutes."""
    room = RoomInfo("r", "R", is_open=False, start_time=10**15, cooldown_seconds=60)
    check_send(room, now_ms=0, last_sent_ms=0, muted_until_ms=10**15, is_admin=True)
    check_vote(room, now_ms=0, muted_until_ms=10**15, is_admin=True)


def test_iso_round_trip_and_zone_required() -> None:
    """Times are ISO 8601 with a zone; offsets are honoured; naive times are refused."""
    assert iso(parse_iso("2026-11-25T19:00:00+01:00")) == "2026-11-25T18:00:00Z"
    assert iso(parse_iso("2026-11-25T18:00:00.250Z")) == "2026-11-25T18:00:00.250Z"
    with pytest.raises(ValueError, match="zone"):
        parse_iso("2026-11-25T18:00:00")
    with pytest.raises(ValueError, match="Invalid isoformat"):
        parse_iso("tomorrow")
