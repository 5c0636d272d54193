"""routing: topic templates and MQTT topic filter semantics."""

from gateway.core.routing import (
    TopicFilter,
    check_filter,
    check_topic_template,
    render_topic,
    topic_matches,
)

READING = {"gateway": "lab-pi-01", "device": "bench-1", "stream": "env", "data": {}}


def _value_error(function, *args):
    try:
        function(*args)
    except ValueError as error:
        return str(error)
    raise AssertionError(f"expected ValueError for {args!r}")


def test_render_topic_substitutes_the_envelope():
    assert render_topic("gw/{gateway}/{device}/{stream}", READING) == "gw/lab-pi-01/bench-1/env"
    assert render_topic("lab/{device}-{stream}", READING) == "lab/bench-1-env"
    assert render_topic("fixed/topic", READING) == "fixed/topic"
    assert render_topic("{stream}/{stream}", READING) == "env/env"


def test_render_topic_uses_each_reading_with_a_cached_template():
    template = "gw/{device}/{stream}"
    for number in range(3):
        reading = dict(READING, device="dev" + str(number))
        assert render_topic(template, reading) == "gw/dev" + str(number) + "/env"


def test_device_names_cannot_inject_levels_or_wildcards():
    reading = dict(READING, device="a/b", stream="x+#y")
    assert render_topic("gw/{device}/{stream}", reading) == "gw/a_b/x__y"
    assert render_topic("gw/{device}", dict(READING, device=7)) == "gw/7"
    assert render_topic("gw/{device}", dict(READING, device=None)) == "gw/"


def test_bad_templates_are_errors():
    message = _value_error(check_topic_template, "gw/{host}/{device}")
    assert message.startswith("unknown placeholder {host}")
    assert "unmatched '{'" in _value_error(check_topic_template, "gw/{device")
    assert "unmatched '}'" in _value_error(check_topic_template, "gw/device}")
    assert "wildcards" in _value_error(check_topic_template, "gw/+/{device}")
    assert "wildcards" in _value_error(check_topic_template, "gw/{device}/#")
    assert "non-empty" in _value_error(check_topic_template, "")
    assert "unknown placeholder" in _value_error(render_topic, "{nope}", READING)


def test_filter_exact_and_single_level_wildcard():
    filters = TopicFilter(["gw/+/bench-1/env"])
    assert filters.matches("gw/lab/bench-1/env")
    assert not filters.matches("gw/lab/bench-2/env")
    assert not filters.matches("gw/lab/bench-1/env/more")
    assert not filters.matches("gw/bench-1/env")
    exact = TopicFilter(["a/b"])
    assert exact.matches("a/b") and not exact.matches("a/b/c") and not exact.matches("a")


def test_plus_matches_empty_levels():
    assert TopicFilter(["a/+/c"]).matches("a//c")
    assert TopicFilter(["+"]).matches("")
    assert not TopicFilter(["+"]).matches("a/b")


def test_hash_matches_the_parent_and_everything_below():
    filters = TopicFilter(["a/#"])
    assert filters.matches("a")
    assert filters.matches("a/b")
    assert filters.matches("a/b/c/d")
    assert not filters.matches("ab")
    assert not filters.matches("b/a")
    assert TopicFilter(["#"]).matches("anything/at/all")
    assert TopicFilter(["gw/+/#"]).matches("gw/x")


def test_wildcards_do_not_match_dollar_topics():
    assert not TopicFilter(["#"]).matches("$SYS/broker/uptime")
    assert not TopicFilter(["+/broker/uptime"]).matches("$SYS/broker/uptime")
    assert TopicFilter(["$SYS/#"]).matches("$SYS/broker/uptime")


def test_any_of_several_filters_and_none_means_all():
    filters = TopicFilter(["gw/+/bench-1/#", "gw/+/pump/+"])
    assert filters.matches("gw/x/bench-1/env")
    assert filters.matches("gw/x/pump/power")
    assert not filters.matches("gw/x/fan/power")
    assert filters.matches("gw/x/pump/power")  # answered from the cache, same result
    assert TopicFilter([]).matches("any/topic")
    assert TopicFilter(None).matches("")


def test_invalid_filters_are_errors():
    assert "must be the last level" in _value_error(TopicFilter, ["a/#/b"])
    assert "whole level" in _value_error(TopicFilter, ["a/b+"])
    assert "whole level" in _value_error(check_filter, "a#")
    assert "non-empty" in _value_error(check_filter, "")


def test_topic_matches_function():
    assert topic_matches("gw/+/bench-1/#", "gw/lab/bench-1")
    assert not topic_matches("gw/+/bench-1/#", "gw/lab/bench-2/env")
    assert topic_matches("a/b", "a/b")
    assert "must be the last level" in _value_error(topic_matches, "#/a", "x/a")
