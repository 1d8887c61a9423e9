"""The tokens table: admin API tokens and single-use join tokens, by id.

Only a SHA-256 of each secret is stored. A record: id, kind (`admin` or `join`),
secret_sha256, created_at, expires_at (RFC 3339 or None), used_at, used_by, description.
`use` is decided in the log, so two nodes presenting one join token at once cannot both
win: the second sees it used.
"""

from __future__ import annotations

from typing import Any

from symphonyd.state.store import Record, Store, failure

TABLE = "tokens"


def get(store: Store, token_id: str) -> Record | None:
    return store.get(TABLE, token_id)


def all_tokens(store: Store) -> list[Record]:
    return store.table(TABLE).values()


def create(store: Store, token: dict[str, Any]) -> dict[str, Any]:
    if get(store, token["id"]) is not None:
        return failure("conflict", "token id already exists")
    return {"ok": True, "token": store.put(TABLE, token["id"], token)}


def check_usable(record: Record | None, secret_sha256: str, now: str) -> tuple[str, str] | None:
    """Why a join token cannot be used now as (code, message), or None if it can."""
    if record is None or record["kind"] != "join" or record["secret_sha256"] != secret_sha256:
        return ("unauthorized", "join token is not valid for this cluster")
    if record.get("used_at"):
        return ("conflict", f"join token was already used (by {record.get('used_by')})")
    if record.get("expires_at") and record["expires_at"] <= now:
        return ("conflict", f"join token expired at {record['expires_at']}")
    return None


def use(store: Store, token_id: str, secret_sha256: str, now: str, used_by: str) -> dict[str, Any]:
    record = get(store, token_id)
    problem = check_usable(record, secret_sha256, now)
    if problem:
        return failure(*problem)
    assert record is not None
    store.put(TABLE, token_id, {**record, "used_at": now, "used_by": used_by})
    return {"ok": True}


def delete(store: Store, token_id: str) -> dict[str, Any]:
    if store.delete(TABLE, token_id) is None:
        return failure("not_found", f"no token {token_id!r}")
    return {"ok": True}
