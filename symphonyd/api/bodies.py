"""Request bodies: one msgspec Struct per JSON body, decoded and checked in one place
(`read_body`), and the same Struct is the body's schema in `/v1/openapi.json`.

A Struct checks the shape (fields, types, enums, ranges, lengths); what needs parsing or
the cluster's state (sizes such as "10G", durations, names free, images that exist) is
checked by the verbs, with the validators of `symphonyd.validation`.

Two kinds:
* `Body`, what users send: an unknown field is refused (a typo must not be ignored).
* `MemberBody`, what members' daemons send each other: an unknown field is ignored, so a
  member of a newer version can add one during a rolling upgrade.

A field that may be left out is `None` by default, and `null` means the same as leaving
it out.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import msgspec
from aiohttp import web

from symphonyd.errors import Invalid


class Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A request body from a user or a script: unknown fields are refused."""


class MemberBody(msgspec.Struct, kw_only=True):
    """A request body one member's daemon sends another: unknown fields are ignored."""


AnyBody = TypeVar("AnyBody", bound=Body | MemberBody)

Text = Annotated[str, msgspec.Meta(min_length=1)]
Size = Annotated[
    str | Annotated[int, msgspec.Meta(ge=1)],
    msgspec.Meta(description="bytes, or a size such as 512M, 10G, 1T (a bare number is GiB)"),
]
NodeName = Annotated[
    str,
    msgspec.Meta(
        pattern="^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
        description="1-63 lowercase letters, digits and '-'",
    ),
]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Values = Annotated[
    dict[str, Any], msgspec.Meta(description="question id (or a tail of it) -> value")
]


async def read_body(request: web.Request, kind: type[AnyBody]) -> AnyBody:
    """The request's JSON body as `kind` (an empty body is `{}`); 400 saying what is wrong
    and where (`$.field`) on anything else."""
    raw = await request.read()
    return decode_body(raw if raw.strip() else b"{}", kind)


def decode_body(raw: bytes, kind: type[AnyBody]) -> AnyBody:
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        raise Invalid(f"request body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise Invalid(f"request body is not valid JSON: {exc}") from None
    except RecursionError:  # '{"a":' * 50000 in a field a member body ignores: a 400
        raise Invalid("request body is not valid JSON: nested too deeply") from None


def given(body: Body | MemberBody) -> dict[str, Any]:
    """The fields of `body` as plain data, without those left out."""
    return {k: v for k, v in msgspec.to_builtins(body).items() if v is not None}


def schemas(kinds: list[type[Body | MemberBody]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """OpenAPI schemas of `kinds`: a `$ref` for each (in order) and the components."""
    refs, components = msgspec.json.schema_components(
        kinds, ref_template="#/components/schemas/{name}"
    )
    return list(refs), dict(components)


def is_required(kind: type[Body | MemberBody]) -> bool:
    """Whether a body of `kind` must be sent (it has a field without a default)."""
    return any(field.required for field in msgspec.structs.fields(kind))
