"""Secrets kept out of the text that leaves the process: errors, log lines, step records.

`REDACTOR` holds the secret texts this process must never write: the cluster secret (for
as long as the daemon runs) and the secret values a lifecycle step has in scope (for as
long as the step runs, `hiding`). `scrub(text)` replaces each of them with `***`, as
written and in the forms an error message quotes it (Python's repr, JSON, percent
encoding). `RedactingFilter` applies it to every record a log handler writes, message and
traceback, whichever logger it came from (a body's own library included).

A text shorter than `MIN_LENGTH` is not hidden: masking every "ab" in a log would make it
unreadable without protecting anything worth the name. This module must not know where
the secrets come from (no lifecycle, no store).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Iterator

__all__ = ["MASK", "MIN_LENGTH", "REDACTOR", "RedactingFilter", "Redactor"]

MASK = "***"
MIN_LENGTH = 4


def _forms(secret: str) -> set[str]:
    """The ways `secret` shows in an error message or a log line."""
    return {
        secret,
        repr(secret)[1:-1],
        json.dumps(secret)[1:-1],
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret),
    }


class Redactor:
    """The secret texts to hide, counted (two steps may hold the same one); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: Counter[str] = Counter()
        self._forms: list[str] = []  # longest first, so a secret inside another goes last

    def add(self, secrets: Iterable[str]) -> None:
        with self._lock:
            self._held.update(s for s in secrets if len(s) >= MIN_LENGTH)
            self._refresh()

    def remove(self, secrets: Iterable[str]) -> None:
        with self._lock:
            self._held.subtract(s for s in secrets if len(s) >= MIN_LENGTH)
            self._held = +self._held  # drop what no one holds any more
            self._refresh()

    @contextlib.contextmanager
    def hiding(self, secrets: Iterable[str]) -> Iterator[None]:
        """Hide `secrets` from everything written while the block runs."""
        held = list(secrets)
        self.add(held)
        try:
            yield
        finally:
            self.remove(held)

    def _refresh(self) -> None:
        forms = {form for secret in self._held for form in _forms(secret) if form}
        self._forms = sorted(forms, key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self._forms)

    def scrub(self, text: str) -> str:
        for form in self._forms:
            if form in text:
                text = text.replace(form, MASK)
        return text


REDACTOR = Redactor()


class RedactingFilter(logging.Filter):
    """On a handler: the record's message and traceback, with every held secret masked."""

    def __init__(self, redactor: Redactor = REDACTOR) -> None:
        super().__init__()
        self.redactor = redactor
        self._format = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.redactor:
            return True
        message = record.getMessage()
        scrubbed = self.redactor.scrub(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._format.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redactor.scrub(record.stack_info)
        return True
