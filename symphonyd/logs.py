"""How this process writes its log: one line per event on stderr, as text or as JSON.

`setup_logging` is called once, by `symphonyd run`, before the daemon starts; journald adds
the time to text lines, JSON lines carry their own. This module only shapes and routes log
records: it must not decide what is logged (each component logs through its own
`logging.getLogger("symphonyd.<component>")`), and it must not import the daemon, Raft, the
store or the API.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from symphonyd.redact import RedactingFilter
from symphonyd.security import now_rfc3339

__all__ = ["JsonLogFormatter", "setup_logging"]


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, component, message, and the resource id when
    the call gave one (`log.info(..., extra={"resource": id})`)."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "time": now_rfc3339(datetime.fromtimestamp(record.created, UTC)),
            "level": record.levelname.lower(),
            "component": record.name,
            "message": record.getMessage(),
        }
        resource = getattr(record, "resource", None)
        if resource is not None:
            event["resource"] = resource
        if record.exc_text:  # formatted already (and redacted: `RedactingFilter`)
            event["error"] = record.exc_text
        elif record.exc_info:
            event["error"] = self.formatException(record.exc_info)
        return json.dumps(event)


def setup_logging(level: str, fmt: str = "text") -> None:
    """One line per event on stderr (journald adds the time): level, component, message."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())  # the cluster secret, a running step's secrets
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    logging.getLogger("pysyncobj").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequests) for f in server.filters):
        server.addFilter(MalformedRequests())


class MalformedRequests(logging.Filter):
    """aiohttp logs a request it cannot parse (an oversized header, a bad request line)
    at ERROR with a traceback, for every such request anyone sends: make it one WARNING
    line naming the client and the reason (the client got its 400)."""

    LIMIT = 160  # characters of the reason kept (it quotes the offending bytes)

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            reason = " ".join(str(error.message or error).split())[: self.LIMIT]
            said = record.getMessage()
            record.msg, record.args = "%s: %s %s", (said, error.code, reason)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = None
        return True
