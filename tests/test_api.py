"""The HTTP control API of a real one-node cluster, spoken to over raw HTTPS and the socket.

Every refused request is checked three ways: its status, its JSON error body
`{"error": {"code", "message"}}`, and that the store did not change (its revision, read
back on the control socket, and the resource itself). One cluster serves the whole
module; the join tests that need more nodes start their own.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest

from symphonyd.api.app import all_routes
from symphonyd.api.bodies import Body
from symphonyd.client import UnixHTTPConnection
from symphonyd.security import JoinToken, decode_join_token
from tests.nodes import NodeProcess, NodeSet, wait_until

pytestmark = pytest.mark.cluster

KV_LIMIT = 512 * 1024


# -- raw HTTP ------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _unverified() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _send(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
) -> Reply:
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


def https(
    node: NodeProcess,
    method: str,
    path: str,
    *,
    token: str | None = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> Reply:
    """One request over the node's HTTPS API (certificate not verified)."""
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    conn = http.client.HTTPSConnection(
        "127.0.0.1", node.api_port, timeout=timeout, context=_unverified()
    )
    return _send(conn, method, path, body, all_headers)


def local(node: NodeProcess, method: str, path: str, body: bytes | None = None) -> Reply:
    """One request over the node's control socket (local root: no token)."""
    return _send(UnixHTTPConnection(node.socket_path, 30.0), method, path, body, {})


def assert_error(reply: Reply, status: int, code: str | None = None) -> dict[str, Any]:
    assert reply.status == status, (reply.status, reply.body[:300])
    assert reply.headers.get_content_type() == "application/json"
    body = reply.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error.get("code"), str) and error["code"], body
    assert isinstance(error.get("message"), str) and error["message"], body
    if code is not None:
        assert error["code"] == code, body
    return dict(error)


def revision(node: NodeProcess) -> int:
    return int(node.status()["revision"])


def member_names(node: NodeProcess) -> list[str]:
    return sorted(m["name"] for m in node.status()["members"])


# -- the module's cluster ------------------------------------------------------------------


@dataclass
class Api:
    nodeset: NodeSet
    node: NodeProcess
    token: str

    def kv_get(self, key: str) -> Reply:
        return https(self.node, "GET", f"/v1/kv/{key}", token=self.token)

    def kv_put(self, key: str, value: bytes, query: str = "") -> Reply:
        path = f"/v1/kv/{key}" + (f"?{query}" if query else "")
        return https(self.node, "PUT", path, token=self.token, body=value)

    def kv_entry(self, key: str) -> dict[str, Any]:
        reply = self.kv_get(key)
        assert reply.status == 200, (reply.status, reply.body[:300])
        (entry,) = reply.json()
        return dict(entry)

    def kv_value(self, key: str) -> bytes | None:
        reply = self.kv_get(key)
        if reply.status == 404:
            return None
        value = self.kv_entry(key)["Value"]
        return base64.b64decode(value) if value else b""


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    nodeset = NodeSet(tmp_path_factory.mktemp("api"))
    try:
        (node,) = nodeset.form(1)
        assert nodeset.admin_token
        node.settled_revision()  # tests compare revisions: the node's own writes come first
        yield Api(nodeset, node, nodeset.admin_token)
    finally:
        nodeset.cleanup()


@pytest.fixture(scope="module")
def outsider(api: Api) -> NodeProcess:
    """A second node that is running but belongs to no cluster (stopped with the module)."""
    return api.nodeset.new("outsider")


# -- authentication ------------------------------------------------------------------------


def test_health_needs_no_token(api: Api) -> None:
    reply = https(api.node, "GET", "/v1/health")
    assert reply.status == 200
    body = reply.json()
    assert body["status"] == "ok"
    assert body["node"] == "n1"
    assert body["initialized"] is True
    assert body["has_quorum"] is True


@pytest.mark.parametrize("path", ["/v1/cluster", "/v1/nodes", "/v1/kv/auth/missing"])
def test_reads_without_token_are_401(api: Api, path: str) -> None:
    assert_error(https(api.node, "GET", path), 401, "unauthorized")


@pytest.mark.parametrize(
    "token",
    [
        "nonsense",
        "abc.def",
        "",
        "node.0000",
    ],
)
def test_write_with_wrong_token_is_401_and_not_written(api: Api, token: str) -> None:
    before = revision(api.node)
    headers = {"Authorization": f"Bearer {token}"}
    reply = https(api.node, "PUT", "/v1/kv/auth/wrong", body=b"v", headers=headers)
    assert_error(reply, 401, "unauthorized")
    assert api.kv_value("auth/wrong") is None
    assert revision(api.node) == before


def test_admin_token_id_with_wrong_secret_is_401(api: Api) -> None:
    token_id = api.token.partition(".")[0]
    before = revision(api.node)
    reply = https(api.node, "PUT", "/v1/kv/auth/forged", token=f"{token_id}.wrong", body=b"v")
    assert_error(reply, 401, "unauthorized")
    assert api.kv_value("auth/forged") is None
    assert revision(api.node) == before


def test_write_without_token_is_401_and_not_written(api: Api) -> None:
    before = revision(api.node)
    assert_error(https(api.node, "PUT", "/v1/kv/auth/none", body=b"v"), 401, "unauthorized")
    assert_error(https(api.node, "POST", "/v1/tokens", body=b"{}"), 401, "unauthorized")
    assert api.kv_value("auth/none") is None
    assert revision(api.node) == before


def test_token_in_x_consul_token_header_is_accepted(api: Api) -> None:
    headers = {"X-Consul-Token": api.token}
    reply = https(api.node, "PUT", "/v1/kv/auth/consul-header", body=b"h", headers=headers)
    assert reply.status == 200 and reply.json() is True
    reply = https(api.node, "GET", "/v1/kv/auth/consul-header", headers=headers)
    assert reply.status == 200
    assert base64.b64decode(reply.json()[0]["Value"]) == b"h"


def test_token_in_query_is_accepted(api: Api) -> None:
    query = urllib.parse.urlencode({"token": api.token})
    reply = https(api.node, "PUT", f"/v1/kv/auth/query?{query}", body=b"q")
    assert reply.status == 200 and reply.json() is True
    reply = https(api.node, "GET", f"/v1/kv/auth/query?{query}")
    assert reply.status == 200
    assert base64.b64decode(reply.json()[0]["Value"]) == b"q"


def _join_token(api: Api) -> str:
    reply = https(api.node, "POST", "/v1/tokens", token=api.token, body=b"{}")
    assert reply.status == 201, reply.body
    body = reply.json()
    assert body["kind"] == "join" and body["token"].startswith("sy1.")
    return str(body["token"])


def test_join_token_credentials_as_bearer_are_403(api: Api) -> None:
    join = decode_join_token(_join_token(api))
    before = revision(api.node)
    bearer = f"{join.token_id}.{join.secret}"
    assert_error(https(api.node, "GET", "/v1/cluster", token=bearer), 403, "forbidden")
    reply = https(api.node, "PUT", "/v1/kv/auth/join", token=bearer, body=b"v")
    assert_error(reply, 403, "forbidden")
    assert api.kv_value("auth/join") is None
    assert revision(api.node) == before


def test_join_token_text_as_bearer_is_403(api: Api) -> None:
    text = _join_token(api)
    before = revision(api.node)
    reply = https(api.node, "PUT", "/v1/kv/auth/join-text", token=text, body=b"v")
    assert api.kv_value("auth/join-text") is None
    assert revision(api.node) == before
    assert_error(reply, 403, "forbidden")


# -- bodies, routes, methods ---------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b'{"kind": "join"',
        b"\xff\xfe",
        b"[]",
        b'["join"]',
        b'"join"',
        b"3",
        b'{"expires": "3x"}',
        b'{"expires": "0h"}',
        b'{"expires": "-1h"}',
        b'{"expires": 5}',
        b'{"expires": true}',
        b'{"kind": "root"}',
        b'{"kind": ["join"]}',
        b'{"description": 5}',
    ],
)
def test_bad_token_requests_are_400_and_create_nothing(api: Api, body: bytes) -> None:
    before = revision(api.node)
    reply = https(api.node, "POST", "/v1/tokens", token=api.token, body=body)
    assert_error(reply, 400, "invalid")
    assert revision(api.node) == before


@pytest.mark.parametrize("expires", ["99999999999999999999d", "9999999d"])
def test_huge_token_expiry_is_400(api: Api, expires: str) -> None:
    before = revision(api.node)
    body = json.dumps({"expires": expires}).encode()
    reply = https(api.node, "POST", "/v1/tokens", token=api.token, body=body)
    assert revision(api.node) == before
    assert_error(reply, 400, "invalid")


def test_valid_token_request_is_201(api: Api) -> None:
    before = revision(api.node)
    body = b'{"kind": "admin", "expires": "1h", "description": "api test"}'
    reply = https(api.node, "POST", "/v1/tokens", token=api.token, body=body)
    assert reply.status == 201
    created = reply.json()
    assert created["kind"] == "admin" and created["expires_at"]
    assert revision(api.node) > before
    status = https(api.node, "GET", "/v1/cluster", token=created["token"])
    assert status.status == 200


@pytest.mark.parametrize("path", ["/v1/nope", "/v2/kv/x", "/", "/v1/kv"])
def test_unknown_route_is_404_json(api: Api, path: str) -> None:
    error = assert_error(https(api.node, "GET", path, token=api.token), 404, "not_found")
    assert path in error["message"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/v1/health"),
        ("POST", "/v1/kv/x"),
        ("PUT", "/v1/tokens"),
        ("PATCH", "/v1/tokens"),
    ],
)
def test_wrong_method_is_405_json(api: Api, method: str, path: str) -> None:
    before = revision(api.node)
    reply = https(api.node, method, path, token=api.token, body=b"{}")
    assert_error(reply, 405, "method_not_allowed")
    assert revision(api.node) == before
    assert api.kv_value("x") is None


# -- KV ------------------------------------------------------------------------------------


def test_kv_value_over_limit_is_413(api: Api) -> None:
    before = revision(api.node)
    assert_error(api.kv_put("kv/big", b"x" * (KV_LIMIT + 1)), 413, "too_large")
    assert api.kv_value("kv/big") is None
    assert revision(api.node) == before


def test_kv_chunked_value_over_limit_is_413(api: Api) -> None:
    """Without a Content-Length the limit is checked on the bytes read."""
    before = revision(api.node)
    conn = http.client.HTTPSConnection(
        "127.0.0.1", api.node.api_port, timeout=10, context=_unverified()
    )
    try:
        conn.request(
            "PUT",
            "/v1/kv/kv/chunked",
            body=iter([b"x" * KV_LIMIT, b"y"]),
            headers={"Authorization": f"Bearer {api.token}"},
            encode_chunked=True,
        )
        response = conn.getresponse()
        reply = Reply(response.status, response.headers, response.read())
    finally:
        conn.close()
    assert_error(reply, 413, "too_large")
    assert api.kv_value("kv/chunked") is None
    assert revision(api.node) == before


def test_kv_value_at_limit_is_stored(api: Api) -> None:
    value = bytes(range(256)) * (KV_LIMIT // 256)
    assert len(value) == KV_LIMIT
    reply = api.kv_put("kv/limit", value)
    assert reply.status == 200 and reply.json() is True
    raw = https(api.node, "GET", "/v1/kv/kv/limit?raw", token=api.token)
    assert raw.status == 200 and raw.body == value
    assert api.kv_value("kv/limit") == value


@pytest.mark.parametrize(
    ("path", "stored_as"),
    [
        ("/v1/kv/kv/a%01b", "kv/a\x01b"),
        ("/v1/kv/kv/tab%09", "kv/tab\t"),
        ("/v1/kv/kv/del%7F", "kv/del\x7f"),
        ("/v1/kv//x", "/x"),
        ("/v1/kv/", ""),
        ("/v1/kv/" + "k" * 1025, "k" * 1025),
    ],
)
def test_kv_bad_key_is_400(api: Api, path: str, stored_as: str) -> None:
    before = revision(api.node)
    assert_error(https(api.node, "PUT", path, token=api.token, body=b"v"), 400, "invalid")
    assert_error(https(api.node, "GET", path, token=api.token), 400, "invalid")
    assert_error(https(api.node, "DELETE", path, token=api.token), 400, "invalid")
    assert revision(api.node) == before
    listing = https(api.node, "GET", "/v1/kv/?keys", token=api.token)
    assert listing.status in (200, 404)
    if listing.status == 200:
        assert stored_as not in listing.json()


@pytest.mark.parametrize("query", ["cas=abc", "cas=-1", "cas=", "cas=1.5", "flags=x", "flags=-2"])
def test_kv_bad_number_is_400_and_value_unchanged(api: Api, query: str) -> None:
    assert api.kv_put("kv/numbers", b"old").json() is True
    before = revision(api.node)
    assert_error(api.kv_put("kv/numbers", b"new", query), 400, "invalid")
    assert api.kv_value("kv/numbers") == b"old"
    assert revision(api.node) == before


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/v1/kv/kv/unicode?cas=%C2%B2"),
        ("PUT", "/v1/kv/kv/unicode?flags=%C2%B2"),
        ("GET", "/v1/kv/kv/unicode?index=%C2%B2"),
        ("GET", "/v1/events?since=%C2%B2"),
    ],
)
def test_unicode_digit_number_is_400(api: Api, method: str, path: str) -> None:
    assert api.kv_put("kv/unicode", b"old").json() is True
    before = revision(api.node)
    reply = https(api.node, method, path, token=api.token, body=b"new" if method == "PUT" else None)
    assert api.kv_value("kv/unicode") == b"old"
    assert revision(api.node) == before
    assert_error(reply, 400, "invalid")


def test_kv_cas(api: Api) -> None:
    assert api.kv_put("kv/cas", b"one", "cas=0").json() is True
    first = api.kv_entry("kv/cas")
    assert api.kv_put("kv/cas", b"two", f"cas={first['ModifyIndex']}").json() is True
    second = api.kv_entry("kv/cas")
    assert second["ModifyIndex"] > first["ModifyIndex"]
    assert second["CreateIndex"] == first["CreateIndex"]

    # a stale index loses and leaves the value alone
    stale = api.kv_put("kv/cas", b"three", f"cas={first['ModifyIndex']}")
    assert stale.status == 200 and stale.json() is False
    assert api.kv_entry("kv/cas") == second
    assert api.kv_value("kv/cas") == b"two"

    # cas=0 means "only if absent"
    exists = api.kv_put("kv/cas", b"four", "cas=0")
    assert exists.status == 200 and exists.json() is False
    assert api.kv_entry("kv/cas") == second

    # an index for a key that does not exist loses too
    missing = api.kv_put("kv/cas-missing", b"x", f"cas={second['ModifyIndex']}")
    assert missing.status == 200 and missing.json() is False
    assert api.kv_value("kv/cas-missing") is None


@pytest.mark.parametrize("query", ["acquire=abc", "release=abc", "acquire"])
def test_kv_sessions_are_400(api: Api, query: str) -> None:
    assert api.kv_put("kv/session", b"old").json() is True
    before = revision(api.node)
    error = assert_error(api.kv_put("kv/session", b"new", query), 400, "invalid")
    assert "not supported" in error["message"]
    assert api.kv_value("kv/session") == b"old"
    assert revision(api.node) == before


def test_kv_delete_cas_with_recurse_is_400(api: Api) -> None:
    assert api.kv_put("kv/keep/a", b"a").json() is True
    entry = api.kv_entry("kv/keep/a")
    before = revision(api.node)
    path = f"/v1/kv/kv/keep/?recurse&cas={entry['ModifyIndex']}"
    assert_error(https(api.node, "DELETE", path, token=api.token), 400, "invalid")
    assert api.kv_entry("kv/keep/a") == entry
    assert revision(api.node) == before


def test_kv_missing_key_is_404_with_index(api: Api) -> None:
    reply = api.kv_get("kv/never-written")
    assert reply.status == 404
    assert int(reply.headers["X-Consul-Index"]) >= 1


def test_kv_blocking_read_returns_when_the_key_changes(api: Api) -> None:
    assert api.kv_put("kv/watched", b"before").json() is True
    entry = api.kv_entry("kv/watched")

    def write_later() -> Reply:
        time.sleep(0.5)
        return api.kv_put("kv/watched", b"after")

    with ThreadPoolExecutor(max_workers=1) as pool:
        started = time.monotonic()
        writer = pool.submit(write_later)
        path = f"/v1/kv/kv/watched?index={entry['ModifyIndex']}&wait=20s"
        reply = https(api.node, "GET", path, token=api.token, timeout=30)
        elapsed = time.monotonic() - started
        assert writer.result(timeout=10).json() is True
    assert reply.status == 200
    assert 0.4 <= elapsed < 10, elapsed
    (changed,) = reply.json()
    assert changed["ModifyIndex"] > entry["ModifyIndex"]
    assert int(reply.headers["X-Consul-Index"]) == changed["ModifyIndex"]
    assert base64.b64decode(changed["Value"]) == b"after"


def test_kv_blocking_read_times_out_with_the_same_index(api: Api) -> None:
    assert api.kv_put("kv/quiet", b"still").json() is True
    entry = api.kv_entry("kv/quiet")
    path = f"/v1/kv/kv/quiet?index={entry['ModifyIndex']}&wait=1s"
    started = time.monotonic()
    reply = https(api.node, "GET", path, token=api.token, timeout=15)
    elapsed = time.monotonic() - started
    assert reply.status == 200
    assert 0.9 <= elapsed < 10, elapsed
    assert reply.json() == [entry]
    assert int(reply.headers["X-Consul-Index"]) == entry["ModifyIndex"]


def test_kv_blocking_read_ignores_other_keys(api: Api) -> None:
    assert api.kv_put("kv/mine", b"v").json() is True
    entry = api.kv_entry("kv/mine")

    def write_other() -> Reply:
        time.sleep(0.2)
        return api.kv_put("kv/other", b"noise")

    with ThreadPoolExecutor(max_workers=1) as pool:
        started = time.monotonic()
        writer = pool.submit(write_other)
        path = f"/v1/kv/kv/mine?index={entry['ModifyIndex']}&wait=1s"
        reply = https(api.node, "GET", path, token=api.token, timeout=15)
        elapsed = time.monotonic() - started
        assert writer.result(timeout=10).json() is True
    assert reply.status == 200
    assert elapsed >= 0.9, elapsed
    assert reply.json() == [entry]


@pytest.mark.parametrize("query", ["index=abc", "index=-1", "index=1&wait=soon", "wait=5x&index=1"])
def test_kv_bad_blocking_query_is_400(api: Api, query: str) -> None:
    reply = https(api.node, "GET", f"/v1/kv/kv/quiet?{query}", token=api.token)
    assert_error(reply, 400, "invalid")


# -- cluster: init and join ----------------------------------------------------------------


def test_init_over_https_is_403(api: Api) -> None:
    cluster_id = api.node.status()["cluster_id"]
    before = revision(api.node)
    reply = https(api.node, "POST", "/v1/cluster/init", token=api.token, body=b"{}")
    assert_error(reply, 403, "forbidden")
    assert_error(https(api.node, "POST", "/v1/cluster/init", body=b"{}"), 403, "forbidden")
    assert api.node.status()["cluster_id"] == cluster_id
    assert revision(api.node) == before


def test_join_over_https_is_403(api: Api) -> None:
    before = revision(api.node)
    body = json.dumps({"token": _join_token(api)}).encode()
    after_token = revision(api.node)
    assert after_token > before
    reply = https(api.node, "POST", "/v1/cluster/join", token=api.token, body=body)
    assert_error(reply, 403, "forbidden")
    assert member_names(api.node) == ["n1"]
    assert revision(api.node) == after_token


def test_init_again_on_socket_is_409(api: Api) -> None:
    cluster_id = api.node.status()["cluster_id"]
    before = revision(api.node)
    assert_error(local(api.node, "POST", "/v1/cluster/init", b"{}"), 409, "conflict")
    status = api.node.status()
    assert status["cluster_id"] == cluster_id
    assert status["has_quorum"] is True
    assert revision(api.node) == before
    assert https(api.node, "GET", "/v1/cluster", token=api.token).status == 200


def test_join_on_a_member_is_409(api: Api) -> None:
    body = json.dumps({"token": _join_token(api)}).encode()
    before = revision(api.node)
    assert_error(local(api.node, "POST", "/v1/cluster/join", body), 409, "conflict")
    assert member_names(api.node) == ["n1"]
    assert revision(api.node) == before


def _garbage_tokens() -> list[str]:
    def sy1(payload: object) -> str:
        raw = json.dumps(payload).encode()
        return "sy1." + base64.urlsafe_b64encode(raw).decode().rstrip("=")

    return [
        "garbage",
        "sy1.",
        "sy1.!!!not-base64!!!",
        sy1({"c": "x"}),
        sy1(["not", "an", "object"]),
        sy1({"c": "x", "a": [], "i": "i", "s": "s", "f": "f"}),
    ]


@pytest.mark.parametrize("body", [b"{}", b'{"token": ""}', b'{"token": 5}', b"[]", b"{bad"])
def test_join_without_token_is_400(outsider: NodeProcess, body: bytes) -> None:
    assert_error(local(outsider, "POST", "/v1/cluster/join", body), 400, "invalid")
    assert outsider.status()["initialized"] is False


@pytest.mark.parametrize("token", _garbage_tokens())
def test_join_with_garbage_token_is_400(api: Api, outsider: NodeProcess, token: str) -> None:
    before = revision(api.node)
    body = json.dumps({"token": token}).encode()
    assert_error(local(outsider, "POST", "/v1/cluster/join", body), 400, "invalid")
    assert outsider.status()["initialized"] is False
    assert member_names(api.node) == ["n1"]
    assert revision(api.node) == before


def test_join_with_wrong_secret_is_401(api: Api, outsider: NodeProcess) -> None:
    real = decode_join_token(_join_token(api))
    before = revision(api.node)
    for token_id in (real.token_id, "0" * 32):
        forged = JoinToken(
            cluster_id=real.cluster_id,
            addresses=real.addresses,
            token_id=token_id,
            secret=real.secret[::-1],
            fingerprint=real.fingerprint,
        ).encode()
        body = json.dumps({"token": forged}).encode()
        reply = local(outsider, "POST", "/v1/cluster/join", body)
        assert_error(reply, 401, "unauthorized")
        assert outsider.status()["initialized"] is False
        assert member_names(api.node) == ["n1"]
        assert revision(api.node) == before


def test_admit_without_valid_join_token_is_refused(api: Api) -> None:
    """The member side of a join over HTTPS: a wrong secret is 401 and admits nobody."""
    real = decode_join_token(_join_token(api))
    before = revision(api.node)
    node = {"name": "intruder", "address": "127.0.0.1", "api_port": 1, "raft_port": 2}
    body = json.dumps({"token_id": real.token_id, "secret": "wrong", "node": node}).encode()
    assert_error(https(api.node, "POST", "/v1/cluster/members", body=body), 401, "unauthorized")
    missing = json.dumps({"node": node}).encode()
    assert_error(https(api.node, "POST", "/v1/cluster/members", body=missing), 400, "invalid")
    assert member_names(api.node) == ["n1"]
    assert revision(api.node) == before


def test_used_join_token_is_409(nodeset: NodeSet) -> None:
    (first,) = nodeset.form(1)
    token = first.client().request("POST", "/v1/tokens", body={})["token"]
    body = json.dumps({"token": token}).encode()
    second = nodeset.new("n2")
    joined = local(second, "POST", "/v1/cluster/join", body)
    assert joined.status == 201, joined.body
    assert member_names(first) == ["n1", "n2"]
    wait_until(  # a new member's own first write: the lifecycles it loaded
        lambda: first.client().request("GET", "/v1/nodes/n2/lifecycles")["published"],
        20,
        "n2 to publish its lifecycles",
    )
    before = revision(first)

    third = nodeset.new("n3")
    error = assert_error(local(third, "POST", "/v1/cluster/join", body), 409, "conflict")
    assert "used" in error["message"]
    assert third.status()["initialized"] is False
    assert member_names(first) == ["n1", "n2"]
    assert revision(first) == before


# -- events --------------------------------------------------------------------------------


@pytest.mark.parametrize("since", ["abc", "-1", "1.0", "%20"])
def test_events_bad_since_is_400(api: Api, since: str) -> None:
    reply = https(api.node, "GET", f"/v1/events?since={since}", token=api.token)
    assert_error(reply, 400, "invalid")


def test_events_bad_last_event_id_is_400(api: Api) -> None:
    reply = https(
        api.node, "GET", "/v1/events", token=api.token, headers={"Last-Event-ID": "later"}
    )
    assert_error(reply, 400, "invalid")


def test_events_since_the_future_is_400(api: Api) -> None:
    future = revision(api.node) + 1000
    reply = https(api.node, "GET", f"/v1/events?since={future}", token=api.token)
    error = assert_error(reply, 400, "invalid")
    assert "future" in error["message"]


def test_events_need_a_token(api: Api) -> None:
    assert_error(https(api.node, "GET", "/v1/events"), 401, "unauthorized")


def test_events_stream_delivers_a_kv_write(api: Api) -> None:
    since = revision(api.node)
    assert api.kv_put("events/seen", b"hello").json() is True
    entry = api.kv_entry("events/seen")
    conn = http.client.HTTPSConnection(
        "127.0.0.1", api.node.api_port, timeout=10, context=_unverified()
    )
    try:
        conn.request(
            "GET", f"/v1/events?since={since}", headers={"Authorization": f"Bearer {api.token}"}
        )
        response = conn.getresponse()
        assert response.status == 200
        assert response.headers.get_content_type() == "text/event-stream"
        event: dict[str, str] = {}
        for _ in range(200):  # bounded: the write is the first change after `since`
            line = response.readline().decode().rstrip("\r\n")
            if line:
                name, _, value = line.partition(": ")
                event[name] = value
                continue
            if event.get("event") == "kv.put":
                break
            event = {}
    finally:
        conn.close()
    assert event.get("event") == "kv.put", event
    assert int(event["id"]) == entry["ModifyIndex"]
    data = json.loads(event["data"])
    assert data["table"] == "kv" and data["op"] == "put" and data["key"] == "events/seen"
    assert data["revision"] == entry["ModifyIndex"]


# -- OpenAPI -------------------------------------------------------------------------------


def test_openapi_describes_every_route(api: Api) -> None:
    reply = https(api.node, "GET", "/v1/openapi.json")
    assert reply.status == 200
    document = reply.json()
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    for route in all_routes():
        path = route.path.replace("{key:.*}", "{key}")
        assert path in paths, path
        assert route.method.lower() in paths[path], (route.method, path)
    schema = document["components"]["schemas"]["Error"]
    assert schema["properties"]["error"]["required"] == ["code", "message"]
    # socket-only routes say so, and no bearer token opens them (issue 14, finding 11)
    enable = paths["/v1/services"]["post"]
    assert enable["security"] == [] and enable["x-symphonyd-local-only"] is True
    assert "403" in enable["responses"]
    assert paths["/v1/kv/{key}"]["get"]["security"] == [{"bearer": []}]


def test_openapi_bodies_are_the_structs_the_api_decodes(api: Api) -> None:
    """Each JSON body's schema in the document is built from the Struct its handler decodes
    (api/bodies.py): the same fields, the same required ones, unknown fields refused in
    users' bodies and ignored in members' (a newer member may add one)."""
    document = https(api.node, "GET", "/v1/openapi.json").json()
    schemas = document["components"]["schemas"]
    seen = 0
    for route in all_routes():
        if route.body is None:
            continue
        path = route.path.replace("{key:.*}", "{key}")
        content = document["paths"][path][route.method.lower()]["requestBody"]["content"]
        ref = content["application/json"]["schema"]["$ref"]
        schema = schemas[ref.rsplit("/", 1)[1]]
        fields = msgspec.structs.fields(route.body)
        assert set(schema["properties"]) == {f.encode_name for f in fields}, path
        assert set(schema.get("required", [])) == {f.name for f in fields if f.required}, path
        users = issubclass(route.body, Body)
        assert schema.get("additionalProperties", True) is (not users), path
        seen += 1
    assert seen >= 25  # every JSON body of the API


@pytest.mark.parametrize(
    ("method", "path", "body", "says"),
    [
        ("POST", "/v1/tokens", {"kind": "join", "colour": "red"}, "unknown field `colour`"),
        ("POST", "/v1/tokens", {"kind": "root"}, "$.kind"),
        ("POST", "/v1/tokens", {"description": 5}, "got `int` - at `$.description`"),
        ("POST", "/v1/tokens", {"description": "x" * 201}, "length <= 200"),
        ("POST", "/v1/tokens", ["kind"], "Expected `object`, got `array`"),
        ("PUT", "/v1/cluster/config/images.min_replicas", {}, "missing required field `value`"),
        ("PUT", "/v1/cluster/config/images.min_replicas", {"value": True}, "$.value"),
        ("POST", "/v1/deployments", {"xpath": "A//b", "yes": "no"}, "$.yes"),
    ],
)
def test_a_body_of_the_wrong_shape_is_400_saying_where_and_changes_nothing(
    api: Api, method: str, path: str, body: Any, says: str
) -> None:
    before = revision(api.node)
    reply = https(api.node, method, path, token=api.token, body=json.dumps(body).encode())
    error = assert_error(reply, 400, "invalid")
    assert error["message"].startswith("request body: ") and says in error["message"], error
    assert revision(api.node) == before


# -- shutdown ------------------------------------------------------------------------------


def test_sigterm_with_a_blocking_query_stops_promptly(nodeset: NodeSet) -> None:
    (node,) = nodeset.form(1)
    token = nodeset.admin_token
    assert token
    node.https(token).request("PUT", "/v1/kv/block", raw=b"v")
    index = node.https(token).request("GET", "/v1/kv/block")[0]["ModifyIndex"]
    opened = threading.Event()

    def block() -> None:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", node.api_port, timeout=10, context=_unverified()
        )
        try:
            conn.request(
                "GET",
                f"/v1/kv/block?index={index}&wait=5m",
                headers={"Authorization": f"Bearer {token}"},
            )
            opened.set()
            conn.getresponse().read()
        except OSError:
            pass
        finally:
            conn.close()

    reader = threading.Thread(target=block, daemon=True)
    reader.start()
    assert opened.wait(5)
    time.sleep(0.3)  # let the server start waiting
    assert node.stop(timeout=3) == 0  # raises AssertionError (after a SIGKILL) if it hangs
    reader.join(10)


def test_an_expired_admin_token_is_refused(api: Api) -> None:
    def token(expires: str) -> str:
        created = https(
            api.node,
            "POST",
            "/v1/tokens",
            token=api.token,
            body=json.dumps({"kind": "admin", "expires": expires}).encode(),
        )
        assert created.status == 201
        return str(created.json()["token"])

    # (two tokens: a 1 s token may already be expired at its first use on a busy machine)
    assert https(api.node, "GET", "/v1/nodes", token=token("1h")).status == 200
    short_lived = token("1s")
    time.sleep(1.5)
    error = assert_error(https(api.node, "GET", "/v1/nodes", token=short_lived), 401)
    assert "expired" in error["message"]


@pytest.mark.parametrize("where", ["query", "header"])
def test_a_token_that_is_not_ascii_is_401_not_500(api: Api, where: str) -> None:
    if where == "query":
        reply = https(api.node, "GET", "/v1/kv/x?token=%C3%A9")
    else:
        reply = https(
            api.node, "GET", "/v1/kv/x", headers={"X-Consul-Token": "é".encode().decode("latin-1")}
        )
    assert_error(reply, 401)


def test_a_blocking_prefix_read_wakes_on_a_delete(api: Api) -> None:
    """Consul keeps tombstones so that deleting a key raises its prefix's index; so do we."""
    assert api.kv_put("tomb/a", b"1").status == 200
    assert api.kv_put("tomb/b", b"2").status == 200
    first = https(api.node, "GET", "/v1/kv/tomb/?recurse", token=api.token)
    index = int(first.headers["X-Consul-Index"])

    def delete_later() -> None:
        time.sleep(0.5)
        https(api.node, "DELETE", "/v1/kv/tomb/a", token=api.token)

    with ThreadPoolExecutor(1) as pool:
        pool.submit(delete_later)
        started = time.monotonic()
        reply = https(
            api.node,
            "GET",
            f"/v1/kv/tomb/?recurse&index={index}&wait=20s",
            token=api.token,
            timeout=30,
        )
        elapsed = time.monotonic() - started
    assert reply.status == 200 and [e["Key"] for e in reply.json()] == ["tomb/b"]
    assert int(reply.headers["X-Consul-Index"]) > index
    assert elapsed < 15, f"the delete did not wake the blocking read ({elapsed:.1f}s)"
