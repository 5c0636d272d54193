"""steps: every transform op and its edge cases, run through a one-step Pipeline."""

from gateway.core.pipeline import Pipeline


def _reading(data, ts=1000.0, device="d1", stream="env"):
    return {"gateway": "g", "device": device, "stream": stream, "seq": 0, "ts": ts, "data": data}


def _one(spec, data, **envelope):
    """The data of the single reading a one-step pipeline gives back, or None if dropped."""
    out = Pipeline([spec]).process(_reading(data, **envelope))
    assert len(out) <= 1
    return out[0]["data"] if out else None


def _kept(pipeline, readings):
    """Process readings in order and return the data of everything that came out."""
    out = []
    for reading in readings:
        out.extend(item["data"] for item in pipeline.process(reading))
    return out


def _close(a, b):
    return abs(a - b) < 1e-9


# -- rename, scale, convert -------------------------------------------------------------------


def test_rename_moves_fields_and_ignores_missing_ones():
    spec = {"op": "rename", "map": {"t": "temperature", "x": "y"}}
    assert _one(spec, {"t": 21.5, "h": 40}) == {"temperature": 21.5, "h": 40}


def test_rename_swaps_at_once():
    assert _one({"op": "rename", "map": {"a": "b", "b": "a"}}, {"a": 1, "b": 2}) == {"a": 2, "b": 1}


def test_scale_factor_and_offset():
    spec = {"op": "scale", "field": "t", "factor": 0.1, "offset": -5}
    assert _close(_one(spec, {"t": 215})["t"], 16.5)
    assert _one({"op": "scale", "field": "t", "offset": 1}, {"t": 2}) == {"t": 3.0}


def test_scale_leaves_non_numeric_and_missing_values_alone():
    spec = {"op": "scale", "field": "t", "factor": 10}
    assert _one(spec, {"t": "n/a"}) == {"t": "n/a"}
    assert _one(spec, {"t": True}) == {"t": True}
    assert _one(spec, {"h": 1}) == {"h": 1}
    assert _one(spec, {"t": None}) == {"t": None}


def test_scale_rounds_to_digits():
    spec = {"op": "scale", "field": "t", "factor": 0.1, "digits": 2}
    assert _one(spec, {"t": 3})["t"] == 0.3


def test_convert_temperature():
    assert _one({"op": "convert", "field": "t", "from": "c", "to": "f"}, {"t": 100}) == {"t": 212.0}
    assert _one({"op": "convert", "field": "t", "from": "c", "to": "k"}, {"t": 0})["t"] == 273.15
    back = _one({"op": "convert", "field": "t", "from": "f", "to": "c"}, {"t": 212})["t"]
    assert _close(back, 100)
    kelvin = _one({"op": "convert", "field": "t", "from": "k", "to": "f", "digits": 2}, {"t": 0})
    assert kelvin == {"t": -459.67}


def test_convert_pressure_length_speed_mass():
    cases = [
        ("hpa", "pa", 1013.25, 101325),
        ("bar", "kpa", 1, 100),
        ("psi", "pa", 1, 6894.757293168361),
        ("mmhg", "pa", 760, 101325.01),
        ("mm", "m", 1500, 1.5),
        ("in", "cm", 1, 2.54),
        ("mi", "km", 1, 1.609344),
        ("ft", "m", 10, 3.048),
        ("km_h", "m_s", 36, 10),
        ("knots", "km_h", 1, 1.852),
        ("mph", "km_h", 1, 1.609344),
        ("lb", "kg", 1, 0.45359237),
        ("kg", "g", 2, 2000),
    ]
    for source, target, value, expected in cases:
        spec = {"op": "convert", "field": "v", "from": source, "to": target}
        got = _one(spec, {"v": value})["v"]
        assert abs(got - expected) < 1e-6 * max(1, abs(expected)), (source, target, got)


# -- filter, threshold ------------------------------------------------------------------------


def test_filter_keeps_values_within_bounds_inclusive():
    spec = {"op": "filter", "field": "t", "min": -40, "max": 85}
    assert _one(spec, {"t": -40}) == {"t": -40}
    assert _one(spec, {"t": 85.0}) == {"t": 85.0}
    assert _one(spec, {"t": 85.1}) is None
    assert _one(spec, {"t": -41}) is None


def test_filter_drops_missing_and_non_numeric():
    spec = {"op": "filter", "field": "t", "min": 0}
    assert _one(spec, {"h": 1}) is None
    assert _one(spec, {"t": "hot"}) is None
    assert _one(spec, {"t": True}) is None
    assert _one(spec, {"t": float("nan")}) is None
    assert _one({"op": "filter", "field": "t"}, {"t": 1e9}) == {"t": 1e9}


def test_threshold_keeps_only_alarms():
    spec = {"op": "threshold", "field": "t", "above": 30, "below": 0}
    assert _one(spec, {"t": 31}) == {"t": 31}
    assert _one(spec, {"t": -1}) == {"t": -1}
    assert _one(spec, {"t": 30}) is None  # strictly above
    assert _one(spec, {"t": 0}) is None
    assert _one(spec, {"t": 15}) is None
    assert _one(spec, {"h": 99}) is None
    assert _one({"op": "threshold", "field": "t", "above": 30}, {"t": -100}) is None


# -- deadband ---------------------------------------------------------------------------------


def test_deadband_on_one_field():
    pipeline = Pipeline([{"op": "deadband", "field": "t", "delta": 0.2}])
    values = [21.5, 21.6, 21.7, 21.8, 21.5, 21.9, 21.9]
    kept = _kept(pipeline, [_reading({"t": v}) for v in values])
    # 21.7 - 21.5 is 0.19999999999999929 in floats: a move by delta must still pass
    assert [d["t"] for d in kept] == [21.5, 21.7, 21.5, 21.9]


def test_deadband_state_is_per_device_and_stream():
    pipeline = Pipeline([{"op": "deadband", "field": "t", "delta": 1}])
    readings = [
        _reading({"t": 10}, device="a"),
        _reading({"t": 10}, device="b"),
        _reading({"t": 10}, device="a", stream="other"),
        _reading({"t": 10.5}, device="a"),
        _reading({"t": 11}, device="b"),
    ]
    assert len(_kept(pipeline, readings)) == 4


def test_deadband_passes_readings_it_cannot_judge():
    pipeline = Pipeline([{"op": "deadband", "field": "t", "delta": 1}])
    readings = [
        _reading({"t": 10}),
        _reading({"h": 5}),
        _reading({"t": "err"}),
        _reading({"t": 10}),
    ]
    assert _kept(pipeline, readings) == [{"t": 10}, {"h": 5}, {"t": "err"}]


def test_deadband_any_field():
    pipeline = Pipeline([{"op": "deadband", "delta": 1}])
    readings = [
        _reading({"t": 10, "h": 50}),
        _reading({"t": 10.5, "h": 50.5}),  # nothing moved by 1
        _reading({"t": 10.5, "h": 51}),  # h moved by 1 since the last passed
        _reading({"t": 10.5, "h": 51, "state": "on"}),  # a new field
        _reading({"t": 10.5, "h": 51, "state": "off"}),  # a state change
        _reading({"t": 10.6, "h": 51, "state": "off"}),
    ]
    assert [d.get("state") for d in _kept(pipeline, readings)] == [None, None, "on", "off"]


def test_deadband_zero_delta_passes_everything():
    pipeline = Pipeline([{"op": "deadband", "field": "t", "delta": 0}])
    assert len(_kept(pipeline, [_reading({"t": 1}) for _ in range(3)])) == 3


# -- downsample -------------------------------------------------------------------------------


def test_downsample_every_keeps_the_first_of_each_interval():
    pipeline = Pipeline([{"op": "downsample", "every": 1.0}])
    times = [100.0, 100.3, 100.99, 101.0, 101.5, 102.2, 105.7, 105.9, 106.0]
    kept = _kept(pipeline, [_reading({"ts": t}, ts=t) for t in times])
    assert [d["ts"] for d in kept] == [100.0, 101.0, 102.2, 105.7, 106.0]


def test_downsample_every_holds_the_rate_despite_jitter():
    pipeline = Pipeline([{"op": "downsample", "every": 1.0}])
    # 10 Hz with jitter for 60 s: one reading per second on average, not fewer
    times = [1000 + i * 0.1 + (0.03 if i % 2 else -0.03) for i in range(1, 601)]
    kept = _kept(pipeline, [_reading({}, ts=t) for t in times])
    assert len(kept) == 60


def test_downsample_every_restarts_when_the_clock_steps_back():
    pipeline = Pipeline([{"op": "downsample", "every": 10}])
    kept = _kept(pipeline, [_reading({"n": n}, ts=t) for n, t in enumerate([5000, 5001, 100, 105])])
    assert [d["n"] for d in kept] == [0, 2]


def test_downsample_count_keeps_every_nth_per_stream():
    pipeline = Pipeline([{"op": "downsample", "count": 3}])
    readings = [_reading({"n": n}, stream="a" if n < 7 else "b") for n in range(10)]
    assert [d["n"] for d in _kept(pipeline, readings)] == [0, 3, 6, 7]


# -- window -----------------------------------------------------------------------------------


def test_window_count_aggregates_and_uses_the_last_ts():
    pipeline = Pipeline([{"op": "window", "count": 3}])
    out = []
    for n, value in enumerate([1, 5, 3, 10]):
        out.extend(pipeline.process(_reading({"t": value, "state": "x"}, ts=100.0 + n)))
    assert len(out) == 1
    assert out[0]["data"] == {"t_mean": 3.0, "t_min": 1, "t_max": 5, "t_count": 3}
    assert out[0]["ts"] == 102.0 and out[0]["device"] == "d1" and out[0]["stream"] == "env"
    rest = pipeline.flush()
    assert [r["data"] for r in rest] == [{"t_mean": 10.0, "t_min": 10, "t_max": 10, "t_count": 1}]
    assert pipeline.flush() == []


def test_window_time_closes_when_a_reading_passes_its_end():
    pipeline = Pipeline([{"op": "window", "every": 10, "functions": ["sum", "first", "last"]}])
    times_values = [(100.0, 1), (104.0, 2), (109.9, 3), (110.0, 4), (125.0, 5)]
    out = []
    for ts, value in times_values:
        out.extend(pipeline.process(_reading({"v": value}, ts=ts)))
    # windows are aligned to multiples of 10 s: [100, 110), [110, 120), then [120, 130)
    assert [r["data"] for r in out] == [
        {"v_sum": 6, "v_first": 1, "v_last": 3},
        {"v_sum": 4, "v_first": 4, "v_last": 4},
    ]
    assert [r["ts"] for r in out] == [109.9, 110.0]
    assert [r["data"]["v_sum"] for r in pipeline.flush()] == [5]


def test_window_fields_functions_and_non_numeric_values():
    spec = {"op": "window", "count": 2, "fields": ["t", "missing"], "functions": ["max"]}
    pipeline = Pipeline([spec])
    readings = [_reading({"t": 1, "h": 9}), _reading({"t": "bad", "h": 1})]
    assert _kept(pipeline, readings) == [{"t_max": 1}]
    # nothing numeric at all: the window closes without a reading
    assert _kept(pipeline, [_reading({"t": "x"}), _reading({"t": "y"})]) == []


def test_window_keeps_devices_apart_and_flush_emits_each():
    pipeline = Pipeline([{"op": "window", "every": 60, "functions": ["count"]}])
    readings = [_reading({"v": 1}, device=d, ts=1.0) for d in ("a", "b", "a")]
    assert _kept(pipeline, readings) == []
    counts = {r["device"]: r["data"]["v_count"] for r in pipeline.flush()}
    assert counts == {"a": 2, "b": 1}


# -- drop, hash -------------------------------------------------------------------------------


def test_drop_removes_fields():
    assert _one({"op": "drop", "fields": ["lat", "lon", "nope"]}, {"lat": 1, "lon": 2, "t": 3}) == {
        "t": 3
    }


def test_hash_replaces_values_with_a_salted_sha256_prefix():
    spec = {"op": "hash", "fields": ["user"], "salt": "pepper", "length": 12}
    data = _one(spec, {"user": "alice", "t": 1})
    # sha256(b"pepperalice")
    assert data == {"user": "b1b68da44784", "t": 1}
    default = _one({"op": "hash", "fields": ["id"]}, {"id": 42})
    assert default == {"id": "73475cb40a568e8d"}  # sha256(b"42"), 16 hex digits
    assert _one({"op": "hash", "fields": ["id"]}, {"t": 1}) == {"t": 1}


def test_hash_is_stable_past_its_cache():
    pipeline = Pipeline([{"op": "hash", "fields": ["id"], "length": 64}])
    first = [pipeline.process(_reading({"id": n}))[0]["data"]["id"] for n in range(1100)]
    again = [pipeline.process(_reading({"id": n}))[0]["data"]["id"] for n in range(1100)]
    assert first == again and len(set(first)) == 1100 and len(first[0]) == 64


# -- validate ---------------------------------------------------------------------------------

RULES = {
    "t": {"type": "number", "min": -40, "max": 125, "required": True},
    "n": {"type": "integer"},
    "label": {"type": "string"},
    "on": {"type": "bool"},
}


def _validated(data, on_fail=None):
    spec = {"op": "validate", "fields": RULES}
    if on_fail:
        spec["on_fail"] = on_fail
    pipeline = Pipeline([spec])
    out = pipeline.process(_reading(data))
    return (out[0] if out else None), pipeline.counters()


def test_validate_keeps_readings_that_meet_every_rule():
    data = {"t": 21.5, "n": 3, "label": "bench", "on": True, "extra": [1]}
    reading, counters = _validated(dict(data))
    assert reading["data"] == data and "invalid" not in reading
    assert counters == {}
    assert _validated({"t": -40})[0] is not None  # bounds are inclusive
    assert _validated({"t": 125})[0] is not None


def test_validate_drops_each_kind_of_failure_and_counts_it_by_reason_and_field():
    cases = [
        ({"t": "hot"}, {"type:t": 1}),
        ({"t": {"x": 1}}, {"type:t": 1}),
        ({"t": True}, {"type:t": 1}),  # a bool is not a measurement
        ({"t": 21, "n": 2.5}, {"type:n": 1}),
        ({"t": 21, "n": True}, {"type:n": 1}),
        ({"t": 21, "label": 7}, {"type:label": 1}),
        ({"t": 21, "on": 1}, {"type:on": 1}),
        ({"t": 125.5}, {"range:t": 1}),
        ({"t": -41}, {"range:t": 1}),
        ({"h": 40}, {"missing:t": 1}),
        ({}, {"empty": 1, "missing:t": 1}),
        ({"t": "x", "n": "y"}, {"type:t": 1, "type:n": 1}),
    ]
    for data, expected in cases:
        reading, counters = _validated(data)
        assert reading is None, data
        assert counters == expected, (data, counters)


def test_validate_flag_keeps_the_reading_and_lists_the_failed_checks():
    reading, counters = _validated({"t": "hot", "n": 1.5}, on_fail="flag")
    assert reading["data"] == {"t": "hot", "n": 1.5}
    assert reading["invalid"] == [
        "n: expected an integer, got 1.5",
        "t: expected a number, got 'hot'",
    ]
    assert counters == {"type:n": 1, "type:t": 1}


def test_validate_counters_add_up_over_readings():
    pipeline = Pipeline([{"op": "validate", "fields": {"t": {"type": "number"}}}])
    for value in (1, "a", 2, None, "b"):
        pipeline.process(_reading({"t": value}))
    assert pipeline.counters() == {"type:t": 3}
