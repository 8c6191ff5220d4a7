"""Control characters in text: one definition for ingest (quarantine) and the recaption filters.

C0/C1 control characters except the whitespace ones (tab, newline, CR, VT, FF: ingest collapses
them to spaces), bidi overrides and isolates (they can hide text), the BOM and the zero-width
space, and the Unicode tag characters (U+E0000-E007F: invisible copies of ASCII, the "ASCII
smuggling" trick that hides instructions from people but not from a language model such as an
LLM prompt rewriter). An undertrained byte-level captioner emits them; a hostile source hides them
in alt-text.
"""
from __future__ import annotations

import re

CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\u200b\u202a-\u202e\u2066-\u2069\ufeff"
                     "\U000e0000-\U000e007f]")


def first_control(text: str) -> tuple[int, str] | None:
    """(offset, "U+XXXX") of the first control character in text, or None."""
    m = CONTROL.search(text)
    return (m.start(), f"U+{ord(m.group()):04X}") if m else None
