"""The connection's protocol state (core/session.py), without sockets: rate limits,
who the connection is, which rooms it may act in, and every refusal's error code."""

from __future__ import annotations

import pytest

from roomcast.core.errors import ClientError
from roomcast.core.protocol import JoinRoom, LeaveRoom, SendMessage, UpvoteMessage
from roomcast.core.session import Admission, ConnectionState, SessionRules
from roomcast.core.tokens import Identity

RULES = SessionRules(
    admin_token="admin-secret",
    max_message_chars=10,
    max_message_rate=1.0,
    message_burst=2,
    rate_limit_close_after=12,
    max_rooms_per_connection=2,
)


def _refusal(call: object, *args: object) -> str:
    with pytest.raises(ClientError) as caught:
        call(*args)  # type: ignore[operator]
    return str(caught.value.code)


def test_the_rate_limit_refuses_once_then_quietly_then_closes() -> None:
    """A burst passes; then one ERROR, quiet drops (an ERROR every tenth), then close."""
    state = ConnectionState(RULES, now=0.0)
    seen = [state.admit(0.0) for _ in range(14)]
    assert seen[:2] == [Admission.HANDLE, Admission.HANDLE]
    assert seen[2] is Admission.REFUSE
    assert seen[3:11] == [Admission.DROP] * 8
    assert seen[11] is Admission.REFUSE  # the tenth refused in a row
    assert seen[13] is Admission.CLOSE
    fresh = ConnectionState(RULES, now=0.0)
    assert [fresh.admit(0.0), fresh.admit(0.0)] == [Admission.HANDLE] * 2
    assert fresh.admit(1.0) is Admission.HANDLE  # a token a second comes back


def test_a_connection_is_one_user() -> None:
    state = ConnectionState(RULES, now=0.0)
    assert state.join(JoinRoom(name="ann", userId=7, roomId=2)) == ("2", "7", "ann")
    state.user_id, state.rooms["2"] = "7", "ann"
    assert _refusal(state.join, JoinRoom(name="bob", userId=8, roomId=3)) == "user_mismatch"
    assert state.send(SendMessage(userId=7, roomId=2, message="hi")) == ("2", "7", "hi")
    assert _refusal(state.send, SendMessage(userId=8, roomId=2, message="hi")) == "user_mismatch"


def test_commands_need_the_room_joined_and_sane_text() -> None:
    state = ConnectionState(RULES, now=0.0)
    assert _refusal(state.send, SendMessage(userId=7, roomId=2, message="hi")) == "not_in_room"
    state.user_id, state.rooms["2"] = "7", "ann"
    assert _refusal(state.send, SendMessage(userId=7, roomId=2, message="   ")) == "message_empty"
    too_long = SendMessage(userId=7, roomId=2, message="x" * 11)
    assert _refusal(state.send, too_long) == "message_too_long"
    assert state.vote(UpvoteMessage(userId=7, roomId=2, chatId=5)) == ("2", "7", "5")
    assert _refusal(state.leave, LeaveRoom(roomId=9)) == "not_in_room"
    assert state.leave(LeaveRoom(roomId=2)) == "2"


def test_rooms_per_connection_are_capped() -> None:
    state = ConnectionState(RULES, now=0.0)
    state.user_id = "7"
    state.rooms.update({"a": "ann", "b": "ann"})
    assert _refusal(state.join, JoinRoom(name="ann", userId=7, roomId="c")) == "too_many_rooms"
    assert state.join(JoinRoom(name="ann", userId=7, roomId="a"))[0] == "a"  # again: fine


def test_with_tokens_the_token_names_the_user_and_its_rooms() -> None:
    state = ConnectionState(RULES, now=0.0, jwt=True)
    join = JoinRoom(name="whoever", userId="claimed", roomId="r")
    assert _refusal(state.join, join) == "unauthorized"
    state.take_identity(Identity("u1", "Ann", frozenset({"r"}), False, 9e9))
    assert state.join(join) == ("r", "u1", "Ann")
    assert _refusal(state.join, JoinRoom(name="x", userId="u1", roomId="other")) == "forbidden"
    other = Identity("u2", None, None, False, 9e9)
    assert _refusal(state.take_identity, other) == "user_mismatch"


def test_admin_by_token_or_by_claim() -> None:
    state = ConnectionState(RULES, now=0.0, jwt=True)
    assert _refusal(state.require_admin) == "forbidden"
    state.take_identity(Identity("u1", None, None, True, 9e9))
    state.require_admin()
    state.take_identity(Identity("u1", None, None, False, 9e9))  # refreshed without it
    assert not state.is_admin
    assert not state.admin_token("wrong")
    assert state.admin_token("admin-secret")
    state.take_identity(Identity("u1", None, None, False, 9e9))
    assert state.is_admin  # the admin token stays
