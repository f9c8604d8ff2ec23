"""Fuzzers for every loader a user feeds (hypothesis). Each asserts the same contract: malformed input is one
KilnError line that names the file, key or line; any other exception, a traceback or a half-written output fails.

`python -m pytest tests/fuzz --hypothesis-show-statistics` prints how many examples each fuzzer ran."""

from __future__ import annotations

from hypothesis import strategies as st


def one_line(err: BaseException) -> bool:
    text = str(err)
    return bool(text.strip()) and "\n" not in text and "Traceback" not in text


BYTE_DAMAGE = ("random", "truncate", "flip")  # the damage any file can take, whatever its format


def damage_bytes(draw, raw: bytes, kind: str, max_random: int = 300, max_flips: int = 6) -> bytes:
    """`raw` damaged in one of the BYTE_DAMAGE ways: random bytes in its place, cut short, or a few bytes flipped."""
    if kind == "random":
        return draw(st.binary(max_size=max_random))
    if kind == "truncate":
        return raw[:draw(st.integers(0, len(raw) - 1))]
    flipped = bytearray(raw)
    for _ in range(draw(st.integers(1, max_flips))):
        flipped[draw(st.integers(0, len(flipped) - 1))] ^= draw(st.integers(1, 255))
    return bytes(flipped)
