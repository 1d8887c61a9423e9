"""One error tree for symphonyd; the API maps it to JSON once, the CLI to one line once.

    SymphonyError                 500 internal
     +-- Invalid                  400 invalid        bad input of any kind
     +-- Unauthorized             401 unauthorized   no or wrong credentials
     +-- Forbidden                403 forbidden      credentials fine, action not allowed here
     +-- NotFound                 404 not_found
     +-- Conflict                 409 conflict       state does not allow it (taken, used, stale)
     +-- TooLarge                 413 too_large
     +-- QuotaExceeded            507 quota_exceeded  the store is full: reads and deletes work
     +-- Gone                     410 gone           history compacted (old ?since)
     +-- NotInitialized           409 not_initialized  the node is not part of a cluster yet
     +-- NoQuorum                 503 no_quorum      no leader reachable: refused, nothing written
     +-- Unavailable              503 unavailable    a peer or the node itself cannot answer now
          +-- Indeterminate       503 indeterminate  a write was sent, its outcome is unknown:
                                                     it may still apply (check, then retry)
     +-- DriverError              500 driver_error   a host driver failed (LVM, libvirt, ...)

Every class carries `http_status` and `code`; `to_dict()` is the body the API sends.
Third-party exceptions are converted where they enter, never passed through.
"""

from __future__ import annotations

from typing import Any, ClassVar


class SymphonyError(Exception):
    http_status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return {"error": body}


class Invalid(SymphonyError):
    http_status = 400
    code = "invalid"


class Unauthorized(SymphonyError):
    http_status = 401
    code = "unauthorized"


class Forbidden(SymphonyError):
    http_status = 403
    code = "forbidden"


class NotFound(SymphonyError):
    http_status = 404
    code = "not_found"


class Conflict(SymphonyError):
    http_status = 409
    code = "conflict"


class Gone(SymphonyError):
    http_status = 410
    code = "gone"


class TooLarge(SymphonyError):
    http_status = 413
    code = "too_large"


class QuotaExceeded(SymphonyError):
    http_status = 507
    code = "quota_exceeded"


class DiskFull(SymphonyError):
    http_status = 507
    code = "disk_full"


class NotInitialized(SymphonyError):
    http_status = 409
    code = "not_initialized"


class NoQuorum(SymphonyError):
    http_status = 503
    code = "no_quorum"


class Unavailable(SymphonyError):
    http_status = 503
    code = "unavailable"


class Indeterminate(Unavailable):
    """A write was proposed and its outcome is unknown (cut off, timed out, the leader
    changed): it may be applied later. Retrying a plain PUT may apply it twice."""

    code = "indeterminate"


class DriverError(SymphonyError):
    http_status = 500
    code = "driver_error"


_BY_CODE: dict[str, type[SymphonyError]] = {
    cls.code: cls
    for cls in (
        SymphonyError,
        Invalid,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        Gone,
        TooLarge,
        QuotaExceeded,
        DiskFull,
        NotInitialized,
        NoQuorum,
        Unavailable,
        Indeterminate,
        DriverError,
    )
}


def from_dict(body: dict[str, Any], status: int = 500) -> SymphonyError:
    """Rebuild an error from an API error body (used by the client)."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return SymphonyError(f"unexpected error response (HTTP {status})")
    cls = _BY_CODE.get(str(err.get("code")), SymphonyError)
    details = err.get("details") or {}
    return cls(str(err.get("message", "")), **details)
