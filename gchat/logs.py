"""The server's log on stderr: --log-format text (for people) or json (for
log collectors: one JSON object per line, with stable field names).

Log calls that know about a client pass it with extra=fields(...), so that
the JSON record carries it as separate fields; the text format shows only
the message, unchanged.
"""

import json
import logging
import sys
from datetime import datetime, timezone

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The optional fields of a JSON record, in the order they are written.
# (LogRecord already has a `name`, the logger's, so they travel in one
# attribute of their own rather than as extra keys of their own.)
FIELDS = ("addr", "name", "room", "reason")
_ATTRIBUTE = "gchat_fields"


def fields(**known) -> dict:
    """extra= for a log call: addr (HOST:PORT), name, room, reason; a value
    of None (not known yet) is left out."""
    unknown = set(known) - set(FIELDS)
    if unknown:
        raise TypeError(f"unknown log fields: {sorted(unknown)}")
    return {_ATTRIBUTE: {k: v for k, v in known.items() if v is not None}}


class JsonFormatter(logging.Formatter):
    """time (ISO 8601, UTC), level, logger, event (the message), then the
    known fields and, after a fault, exception (the traceback)."""

    def format(self, record):
        stamp = datetime.fromtimestamp(record.created, timezone.utc)
        out = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        known = getattr(record, _ATTRIBUTE, {})
        for key in FIELDS:
            if key in known:
                out[key] = str(known[key])
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        # ASCII escapes: one line, whatever the names' scripts and whatever
        # encoding stderr has; JSON readers decode them.
        return json.dumps(out, ensure_ascii=True)


def setup(level: str, log_format: str = "text"):
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}, not {log_format!r}")
    if log_format == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        logging.basicConfig(level=level, handlers=[handler])
    else:
        logging.basicConfig(level=level, stream=sys.stderr, format=TEXT_FORMAT)
