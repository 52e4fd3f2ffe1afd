"""Secrets out of anything printed or logged: passwords in URLs (``user:pw@host`` and
``?password=``), credential query parameters, bearer tokens, and exception text in log records.

:func:`redact` is pure string work (no FastAPI, SQL or Celery), so the worker uses it too.
:func:`install_log_redaction` makes every log record of the process pass through it -- the
message and the formatted traceback -- because an unexpected error's message can quote a database
or broker URL (a connection error, a refused statement) and is logged unchanged otherwise.
"""

from __future__ import annotations

import logging
import re
import threading

MASK = "***"

# scheme://user:password@host and scheme://:password@host (redis)
_USERINFO = re.compile(r"(?P<pre>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)(?P<secret>[^@\s/]+)(?=@)")
# ?password=..., &token=..., sslpassword=, secret_key=... (URL query strings and key=value DSNs)
_PARAM = re.compile(
    r"(?P<pre>(?<![A-Za-z0-9_])(?:[A-Za-z0-9_]*(?:password|passwd|pwd|secret|token|api_?key|access_?key|"
    r"auth|credential)[A-Za-z0-9_]*)\s*=\s*)(?P<secret>'[^']*'|\"[^\"]*\"|[^&\s;,'\")]+)", re.IGNORECASE)
_BEARER = re.compile(r"(?P<pre>\bBearer\s+)(?P<secret>[A-Za-z0-9._~+/=-]+)", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with every credential it quotes replaced by ``***``."""
    if not text:
        return text
    for pattern in (_USERINFO, _PARAM, _BEARER):
        text = pattern.sub(lambda m: m.group("pre") + MASK, text)
    return text


_installed = threading.Lock()
_done = False


def install_log_redaction() -> None:
    """Wrap the process's log-record factory (once): each record's message and traceback are
    redacted when the record is made, before any handler or formatter sees it."""
    global _done
    with _installed:
        if _done:
            return
        previous = logging.getLogRecordFactory()
        formatter = logging.Formatter()

        def factory(*args: object, **kwargs: object) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            try:
                message = record.getMessage()
            except Exception:  # noqa: BLE001 - a bad format string is the handler's problem, as before
                return record
            clean = redact(message)
            if clean != message:
                record.msg, record.args = clean, ()
            if record.exc_info and record.exc_info[1] is not None:
                # formatters use exc_text when set: the traceback is rendered (and cleaned) once, here
                record.exc_text = redact(formatter.formatException(record.exc_info))
            return record

        logging.setLogRecordFactory(factory)
        _done = True
