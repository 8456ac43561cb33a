"""The driver's log deduplication rules (pure: no processes, no clock)."""

import pytest

from luminary._private import logdedup
from luminary._private.logdedup import LogDeduplicator, format_line, pattern, settings_from_env

pytestmark = pytest.mark.timeout(10)


def batch(pid, *lines, ip="10.0.0.1", name="f"):
    return {"name": name, "pid": pid, "ip": ip, "lines": list(lines)}


def printed(groups):
    return [(src["pid"], line) for src, lines in groups for line in lines]


def test_pattern_drops_words_with_numbers():
    assert pattern("step 3 done id=0x1f") == "step done"
    assert pattern("  a   b ") == "a b"
    assert pattern("42") == ""


def test_first_line_at_once_then_repeats_from_other_workers_counted():
    d = LogDeduplicator(5)
    assert printed(d.add(batch(1, "hello 1"), 0.0)) == [(1, "hello 1")]
    assert printed(d.add(batch(1, "hello 2"), 0.1)) == [(1, "hello 2")]     # same process: printed
    assert printed(d.add(batch(2, "hello 3"), 0.2)) == []                   # second process: counted
    assert printed(d.add(batch(1, "hello 4"), 0.3)) == []                   # now every repeat is
    assert d.next_expiry() == 5.0
    out = printed(d.expire(5.0))
    assert out == [(1, ("hello 4", " [repeated 2x across cluster]" + logdedup.FIRST_REPEAT_HINT))]
    # the pattern stays aggregated; the hint is given once
    d.add(batch(3, "hello 5"), 6.0)
    d.add(batch(2, "hello 6"), 6.1)
    assert printed(d.expire(10.0)) == [(2, ("hello 6", " [repeated 2x across cluster]"))]


def test_single_counted_repeat_is_printed_plainly_and_forgotten():
    d = LogDeduplicator(5)
    d.add(batch(1, "x"), 0.0)
    d.add(batch(2, "x"), 1.0)
    assert printed(d.add(batch(3, "other"), 5.0)) == [(3, "other"), (2, "x")]
    assert "x" not in d.recent and d.next_expiry() is None
    assert printed(d.add(batch(4, "x"), 6.0)) == [(4, "x")]      # a fresh first occurrence


def test_empty_pattern_lines_and_regexes():
    d = LogDeduplicator(5, allow_re="keep", skip_re="noise")
    d.add(batch(1, "keep me", "x"), 0.0)
    assert printed(d.add(batch(2, "123", "", "keep me", "noise here", "x"), 0.1)) == [(2, "123"), (2, ""), (2, "keep me")]
    assert printed(d.flush()) == [(2, "x")]
    assert d.recent == {}


def test_flush_reports_counts():
    d = LogDeduplicator(5)
    for pid in range(1, 5):
        d.add(batch(pid, "same"), 0.1 * pid)
    assert printed(d.flush()) == [(4, ("same", " [repeated 3x across cluster]" + logdedup.FIRST_REPEAT_HINT))]


def test_format_line_prefix_ip_and_colour():
    src = {"name": "Actor", "pid": 7, "ip": "10.0.0.2"}
    assert format_line(src, "hi", local_ip="10.0.0.2") == "(Actor pid=7) hi\n"
    assert format_line(src, "hi", local_ip="10.0.0.1") == "(Actor pid=7, ip=10.0.0.2) hi\n"
    assert format_line(src, "hi", prefix=False) == "hi\n"
    assert format_line(src, ("hi", " [repeated 2x across cluster]"), local_ip="10.0.0.2", color=True) == \
        "\x1b[36m(Actor pid=7)\x1b[0m hi\x1b[32m [repeated 2x across cluster]\x1b[0m\n"


def test_settings_from_env():
    s = settings_from_env({})
    assert s.enabled and s.window_s == 5.0 and s.prefix and s.color is None
    s = settings_from_env({"RAY_DEDUP_LOGS": "0", "RAY_DEDUP_LOGS_AGG_WINDOW_S": "2.5",
                           "RAY_DISABLE_WORKER_LOG_PREFIX": "1", "RAY_COLOR_PREFIX": "0"})
    assert not s.enabled and s.window_s == 2.5 and not s.prefix and s.color is False
    for env, word in (({"RAY_DEDUP_LOGS": "maybe"}, "RAY_DEDUP_LOGS"),
                      ({"RAY_DEDUP_LOGS_AGG_WINDOW_S": "-1"}, "RAY_DEDUP_LOGS_AGG_WINDOW_S"),
                      ({"RAY_DEDUP_LOGS_SKIP_REGEX": "("}, "RAY_DEDUP_LOGS_SKIP_REGEX")):
        with pytest.raises(ValueError, match=word):
            settings_from_env(env)
