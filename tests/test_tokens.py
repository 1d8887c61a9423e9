"""Join tokens, decided in the log (state/tokens.py through raft/fsm.py), and the token
text helpers of symphonyd/security.py.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from symphonyd.errors import Invalid
from symphonyd.raft.entries import Entry, EntryType
from symphonyd.raft.fsm import FSM
from symphonyd.security import (
    JOIN_TOKEN_PREFIX,
    JoinToken,
    decode_join_token,
    new_api_token,
    now_rfc3339,
    secret_matches,
    sha256_hex,
    split_api_token,
)
from symphonyd.state.store import Store

T0 = dt.datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)
SECRET = "s3cret"


def at(seconds: float) -> str:
    return now_rfc3339(T0 + dt.timedelta(seconds=seconds))


def node(name: str, port: int) -> dict[str, Any]:
    return {
        "name": name,
        "id": f"id-{name}",
        "address": "192.0.2.1",
        "api_port": 8443,
        "raft_port": port,
        "raft_addr": f"192.0.2.1:{port}",
        "status": "joining",
        "version": "0.1",
        "created_at": at(0),
    }


def create_token(fsm: FSM, token_id: str, *, kind: str = "join", expires_at: str | None) -> None:
    token = {
        "id": token_id,
        "kind": kind,
        "secret_sha256": sha256_hex(SECRET),
        "created_at": at(0),
        "expires_at": expires_at,
        "description": "",
    }
    assert fsm.apply(Entry(EntryType.TOKEN_CREATE, {"token": token}).encode())["ok"] is True


def join(
    fsm: FSM, name: str, port: int, token_id: str, *, secret: str = SECRET, now: str | None = None
) -> dict[str, Any]:
    body = {
        "node": node(name, port),
        "token": {"id": token_id, "secret_sha256": sha256_hex(secret), "now": now or at(10)},
    }
    return fsm.apply(Entry(EntryType.NODE_ADD, body).encode())


def snapshot_of(fsm: FSM) -> dict[str, Any]:
    return {name: dict(t.records) for name, t in fsm.store.tables.items()} | {
        "revision": fsm.store.revision
    }


@pytest.fixture
def fsm() -> FSM:
    fsm = FSM(Store())
    assert fsm.apply(Entry(EntryType.NODE_ADD, {"node": node("first", 7001)}).encode())["ok"]
    create_token(fsm, "tok", expires_at=at(3600))
    return fsm


# -- join tokens through the FSM -------------------------------------------------------------


def test_a_join_token_admits_one_node(fsm: FSM) -> None:
    result = join(fsm, "second", 7002, "tok")
    assert result["ok"] is True
    assert result["node"]["name"] == "second"
    assert fsm.store.get("nodes", "second")["raft_addr"] == "192.0.2.1:7002"
    record = fsm.store.get("tokens", "tok")
    assert record["used_at"] == at(10)
    assert record["used_by"] == "second"
    # the token use and the node share one revision: both or neither
    assert record["mod_revision"] == fsm.store.get("nodes", "second")["mod_revision"]


def test_a_join_token_works_only_once(fsm: FSM) -> None:
    assert join(fsm, "second", 7002, "tok")["ok"] is True
    before = snapshot_of(fsm)

    result = join(fsm, "third", 7003, "tok", now=at(20))
    assert result["ok"] is False
    assert result["error"]["code"] == "conflict"
    assert "already used" in result["error"]["message"]
    assert fsm.store.get("nodes", "third") is None
    assert fsm.store.get("tokens", "tok")["used_by"] == "second"
    assert snapshot_of(fsm) == before


@pytest.mark.parametrize("now_offset", [3600, 3600.000001, 86400 * 365])
def test_an_expired_join_token_is_refused(fsm: FSM, now_offset: float) -> None:
    before = snapshot_of(fsm)
    result = join(fsm, "second", 7002, "tok", now=at(now_offset))
    assert result["ok"] is False
    assert result["error"]["code"] == "conflict"
    assert "expired" in result["error"]["message"]
    assert fsm.store.get("nodes", "second") is None
    assert fsm.store.get("tokens", "tok").get("used_at") is None
    assert snapshot_of(fsm) == before


def test_a_join_token_works_until_just_before_it_expires(fsm: FSM) -> None:
    assert join(fsm, "second", 7002, "tok", now=at(3599.999999))["ok"] is True


def test_a_join_token_without_expiry_never_expires(fsm: FSM) -> None:
    create_token(fsm, "forever", expires_at=None)
    assert join(fsm, "second", 7002, "forever", now="9999-12-31T23:59:59.999999Z")["ok"] is True


@pytest.mark.parametrize(
    ("token_id", "secret", "kind"),
    [
        ("tok", "wrong", "join"),  # wrong secret
        ("nope", SECRET, "join"),  # no such token
        ("adm", SECRET, "admin"),  # an admin token is no join token
    ],
)
def test_a_join_token_with_wrong_credentials_is_unauthorized(
    fsm: FSM, token_id: str, secret: str, kind: str
) -> None:
    create_token(fsm, "adm", kind="admin", expires_at=None)
    before = snapshot_of(fsm)
    result = join(fsm, "second", 7002, token_id, secret=secret)
    assert result["ok"] is False
    assert result["error"]["code"] == "unauthorized"
    assert fsm.store.get("nodes", "second") is None
    assert snapshot_of(fsm) == before


@pytest.mark.parametrize(
    ("name", "port"),
    [("first", 7002), ("second", 7001)],  # taken name; taken raft address
    ids=["name-taken", "address-taken"],
)
def test_a_refused_member_leaves_the_token_unused(fsm: FSM, name: str, port: int) -> None:
    before = snapshot_of(fsm)
    result = join(fsm, name, port, "tok")
    assert result["ok"] is False
    assert result["error"]["code"] == "conflict"
    assert snapshot_of(fsm) == before
    assert fsm.store.get("tokens", "tok").get("used_at") is None
    assert fsm.store.get("nodes", "first")["raft_port"] == 7001
    # the token is still good for a node that can join
    assert join(fsm, "second", 7002, "tok")["ok"] is True


def test_token_use_entry_follows_the_same_rules(fsm: FSM) -> None:
    def use(now: str, secret: str = SECRET) -> dict[str, Any]:
        body = {"id": "tok", "secret_sha256": sha256_hex(secret), "now": now, "used_by": "x"}
        return fsm.apply(Entry(EntryType.TOKEN_USE, body).encode())

    assert use(at(5), secret="bad")["error"]["code"] == "unauthorized"
    assert use(at(3600))["error"]["code"] == "conflict"
    assert use(at(5))["ok"] is True
    assert use(at(6))["error"]["code"] == "conflict"
    assert fsm.store.get("tokens", "tok")["used_at"] == at(5)


def test_a_deleted_join_token_cannot_be_used(fsm: FSM) -> None:
    assert fsm.apply(Entry(EntryType.TOKEN_DELETE, {"id": "tok"}).encode())["ok"] is True
    assert join(fsm, "second", 7002, "tok")["error"]["code"] == "unauthorized"


# -- timestamps ------------------------------------------------------------------------------


def test_now_rfc3339_is_fixed_width_utc() -> None:
    assert now_rfc3339(T0) == "2031-05-06T07:08:09.123456Z"
    assert now_rfc3339(dt.datetime(2031, 5, 6, tzinfo=dt.UTC)) == "2031-05-06T00:00:00.000000Z"
    east = dt.timezone(dt.timedelta(hours=2))
    assert now_rfc3339(dt.datetime(2031, 5, 6, 1, 0, tzinfo=east)) == (
        "2031-05-05T23:00:00.000000Z"
    )
    assert len(now_rfc3339()) == len("2031-05-06T07:08:09.123456Z")


MOMENTS = st.datetimes(
    min_value=dt.datetime(2000, 1, 1),
    max_value=dt.datetime(9999, 12, 30),
    timezones=st.just(dt.UTC),
)


@settings(max_examples=300, deadline=None)
@given(MOMENTS, MOMENTS)
def test_rfc3339_strings_compare_like_the_moments(a: dt.datetime, b: dt.datetime) -> None:
    # tokens.check_usable compares expires_at and now as strings
    assert (now_rfc3339(a) < now_rfc3339(b)) == (a < b)
    assert (now_rfc3339(a) == now_rfc3339(b)) == (a == b)


# -- join token text -------------------------------------------------------------------------


def make_join_token(**changes: Any) -> JoinToken:
    fields: dict[str, Any] = {
        "cluster_id": "c" * 32,
        "addresses": ["192.0.2.1:8443", "[2001:db8::1]:8443"],
        "token_id": "t" * 32,
        "secret": "Zm9v-YmFy_secret",
        "fingerprint": "ab" * 32,
    }
    return JoinToken(**{**fields, **changes})


def test_join_token_round_trip() -> None:
    token = make_join_token()
    text = token.encode()
    assert text.startswith(JOIN_TOKEN_PREFIX)
    assert "=" not in text  # no padding: safe to paste on a command line
    assert decode_join_token(text) == token
    assert decode_join_token(f"  {text}\n") == token  # pasted with whitespace


TEXT = st.text(min_size=1, max_size=20)


@settings(max_examples=100, deadline=None)
@given(TEXT, st.lists(TEXT, min_size=1, max_size=3), TEXT, TEXT, TEXT)
def test_join_token_round_trip_any_text(
    cluster_id: str, addresses: list[str], token_id: str, secret: str, fingerprint: str
) -> None:
    token = JoinToken(cluster_id, addresses, token_id, secret, fingerprint)
    assert decode_join_token(token.encode()) == token


@pytest.mark.parametrize(
    "text",
    [
        None,
        42,
        "",
        "sy2.abc",
        "eyJjIjoiYyJ9",  # no prefix
        "sy1.",
        "sy1.!!!!",
        "sy1.a",  # impossible base64 length
        "sy1." + "bm90IGpzb24",  # "not json"
        "sy1." + "WzEsMl0",  # [1,2]
        "sy1." + "eyJjIjoiYyJ9",  # {"c":"c"}: fields missing
        "sy1." + "_-8",  # bytes that are not UTF-8
    ],
)
def test_decode_of_damaged_join_token_raises_invalid(text: Any) -> None:
    with pytest.raises(Invalid):
        decode_join_token(text)


def test_decode_of_a_truncated_join_token_raises_invalid() -> None:
    text = make_join_token().encode()
    for cut in range(len(JOIN_TOKEN_PREFIX), len(text) - 1, 7):
        with pytest.raises(Invalid):
            decode_join_token(text[:cut])


def test_a_join_token_without_addresses_is_invalid() -> None:
    with pytest.raises(Invalid, match="no member address"):
        decode_join_token(make_join_token(addresses=[]).encode())


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_decode_raises_only_invalid_on_any_text(tail: str) -> None:
    for text in (tail, JOIN_TOKEN_PREFIX + tail):
        try:
            token = decode_join_token(text)
        except Invalid:
            continue
        assert isinstance(token, JoinToken)
        assert token.addresses


# -- API tokens --------------------------------------------------------------------------------


def test_new_api_token_splits_back_into_id_and_secret() -> None:
    token_id, text, stored = new_api_token()
    assert len(token_id) == 32
    int(token_id, 16)  # hex
    parts = split_api_token(text)
    assert parts is not None
    assert parts[0] == token_id
    assert stored == hashlib.sha256(parts[1].encode()).hexdigest()
    assert secret_matches(parts[1], stored)
    assert not secret_matches(parts[1] + "x", stored)
    assert not secret_matches("", stored)


def test_new_api_tokens_are_all_different() -> None:
    made = [new_api_token() for _ in range(20)]
    assert len({t[0] for t in made}) == 20
    assert len({t[1] for t in made}) == 20
    assert len({t[2] for t in made}) == 20


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("id.secret", ("id", "secret")),
        ("id.sec.ret", ("id", "sec.ret")),  # split at the first dot
        ("nodot", None),
        (".secret", None),
        ("id.", None),
        ("", None),
    ],
)
def test_split_api_token(text: str, parts: tuple[str, str] | None) -> None:
    assert split_api_token(text) == parts
