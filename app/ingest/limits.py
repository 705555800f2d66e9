"""What every store can hold, checked before a row is stored.

A value a store refuses at write would fail its whole group commit (a 503, then
the same again at every redelivery, then the dead-letter topic), and a value a
store takes but a reader cannot represent would break every later read. So a
payload is checked against the limits of every store here, whichever store
runs, and one that exceeds them is a rejection naming the limit. Times have
their range in `app.records.micros`.
"""

from __future__ import annotations

import pyarrow
import pyarrow.compute

# BigQuery's JSON type holds at most 500 levels of nesting; deeper text is
# refused at validation, whichever store runs, so every store holds what one does.
MAX_JSON_DEPTH = 500
# What nesting is read from: brackets, and the quotes that open and close strings.
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')
# An opening bracket as +1 and a closing one as -1, read as int8.
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
# What is read at a time: split whole, 5 million empty strings were 5 million objects
# (200 MB for a 12 MB payload); a slice's pieces are at most this many.
_SLICE = 64 * 1024


def too_deep(json_text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the valid JSON `json_text` nests arrays and objects more than `limit` levels.

    Every step runs in C, a slice at a time (a 9 MB payload of 100,000 objects takes
    ~0.1 s, about twice its decoding), holding at most twice the text: brackets inside
    strings are text, so the strings go first. In valid JSON a backslash only ever
    starts an escape inside a string, so dropping escaped backslashes, then escaped
    quotes, leaves quotes that only open and close strings: what lies between every
    other one is outside.
    """
    # Fewer brackets than the limit cannot nest past it: the usual answer.
    if json_text.count("[") + json_text.count("{") <= limit:
        return False
    unescaped = json_text.encode().replace(b"\\\\", b"").replace(b'\\"', b"")
    structure = unescaped.translate(None, _NOT_STRUCTURE)
    del unescaped
    depth = 0
    inside = False  # whether the slice begins inside a string
    for at in range(0, len(structure), _SLICE):
        pieces = structure[at : at + _SLICE].split(b'"')
        outside = b"".join(pieces[int(inside) :: 2])
        # An odd number of quotes (an even number of pieces) ends on the other side.
        inside ^= len(pieces) % 2 == 0
        del pieces
        if not outside:
            continue
        steps = outside.translate(_STEPS)
        depths = pyarrow.compute.cumulative_sum(
            pyarrow.Array.from_buffers(
                pyarrow.int8(), len(steps), [None, pyarrow.py_buffer(steps)]
            ).cast(pyarrow.int32())
        )
        if depth + pyarrow.compute.max(depths).as_py() > limit:
            return True
        depth += depths[-1].as_py()
    return False


# What the decoders raise on nesting deeper than their recursion limit (~1,000
# levels for msgspec, whatever the stack already holds): past MAX_JSON_DEPTH too.
TOO_DEEP = f"nested more than {MAX_JSON_DEPTH} levels deep (BigQuery's JSON limit)"
