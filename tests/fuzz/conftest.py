"""Fuzzers for every loader a user feeds (hypothesis). Each asserts the same contract: malformed input is one
KilnError line that names the file, key or line; any other exception, a traceback or a half-written output fails.

`python -m pytest tests/fuzz --hypothesis-show-statistics` prints how many examples each fuzzer ran."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile("kiln", deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
                          derandomize=False, print_blob=True)
settings.load_profile("kiln")


def one_line(err: BaseException) -> bool:
    text = str(err)
    return bool(text.strip()) and "\n" not in text and "Traceback" not in text
