"""pipeline: step chaining, flush, spec validation and the tables the config validator reads."""

from gateway.core import pipeline as pipeline_module
from gateway.core.parsers import make_parser
from gateway.core.pipeline import STEP_PARAMETERS, UNITS, Pipeline, check_step, declared_types

TYPES = ("string", "number", "integer", "duration", "list of strings", "map of strings", "table")


def _reading(data, ts=0.0, device="d1", stream="env"):
    return {"gateway": "g", "device": device, "stream": stream, "seq": 0, "ts": ts, "data": data}


def _error(specs):
    try:
        Pipeline(specs)
    except ValueError as error:
        return str(error)
    raise AssertionError(f"expected ValueError for {specs!r}")


def test_empty_pipeline_passes_readings_through():
    reading = _reading({"t": 1})
    assert Pipeline([]).process(reading) == [reading]
    assert Pipeline(None).flush() == []


def test_steps_run_in_order():
    pipeline = Pipeline(
        [
            {"op": "rename", "map": {"t": "temperature"}},
            {"op": "scale", "field": "temperature", "factor": 0.1},
            {"op": "filter", "field": "temperature", "min": 0, "max": 50},
            {"op": "convert", "field": "temperature", "from": "c", "to": "f", "digits": 1},
            {"op": "drop", "fields": ["secret"]},
        ]
    )
    out = pipeline.process(_reading({"t": 215, "secret": "x"}))
    assert [r["data"] for r in out] == [{"temperature": 70.7}]
    assert pipeline.process(_reading({"t": 9999})) == []  # filtered after scaling


def test_a_dropped_reading_stops_at_the_step_that_dropped_it():
    pipeline = Pipeline([{"op": "filter", "field": "t", "min": 0}, {"op": "window", "count": 2}])
    assert pipeline.process(_reading({"t": -5})) == []
    assert pipeline.process(_reading({"t": 1})) == []
    out = pipeline.process(_reading({"t": 3}))
    assert [r["data"]["t_count"] for r in out] == [2]  # -5 never reached the window


def test_flush_passes_window_results_through_later_steps():
    pipeline = Pipeline(
        [
            {"op": "window", "every": 60, "functions": ["mean"]},
            {"op": "rename", "map": {"t_mean": "t"}},
            {"op": "threshold", "field": "t", "above": 10},
        ]
    )
    for device, value in (("hot", 20), ("hot", 30), ("cold", 1)):
        assert pipeline.process(_reading({"t": value}, device=device)) == []
    out = pipeline.flush()
    assert [(r["device"], r["data"]) for r in out] == [("hot", {"t": 25.0})]


def test_two_windows_flush_through_each_other():
    pipeline = Pipeline(
        [
            {"op": "window", "count": 2, "functions": ["sum"]},
            {"op": "window", "count": 10, "functions": ["sum"]},
        ]
    )
    for value in (1, 2, 3):
        assert pipeline.process(_reading({"v": value})) == []
    # the first window's open (3) flushes into the second, which then holds 3 + 3
    assert [r["data"] for r in pipeline.flush()] == [{"v_sum_sum": 6}]


def test_unknown_op_is_a_clear_error():
    message = _error([{"op": "rename", "map": {"a": "b"}}, {"op": "smooth"}])
    assert message.startswith("steps[1].op: expected one of convert, deadband")
    assert message.endswith("got 'smooth'")
    assert _error([{"field": "t"}]).endswith("got nothing")
    assert _error(["scale"]) == "steps[0]: expected a table with an op, got 'scale'"


def test_bad_parameters_name_the_key_and_what_was_expected():
    assert _error([{"op": "scale"}]) == "steps[0].field: required for scale"
    assert (
        _error([{"op": "scale", "field": "t", "factor": "2"}])
        == "steps[0].factor: expected a number, got '2'"
    )
    assert _error([{"op": "scale", "field": "t", "facter": 2}]) == (
        "steps[0].facter: unknown parameter for scale, "
        "expected one of digits, factor, field, offset"
    )
    assert _error([{"op": "drop", "fields": "t"}]) == (
        "steps[0].fields: expected a list of strings, got 't'"
    )
    assert _error([{"op": "rename", "map": {"a": 1}}]) == (
        "steps[0].map: expected a table of strings, got a table"
    )
    assert _error([{"op": "deadband", "delta": True}]) == (
        "steps[0].delta: expected a number, got true"
    )


def test_rules_across_parameters():
    assert _error([{"op": "convert", "field": "t", "from": "c", "to": "psi"}]) == (
        "steps[0].to: cannot convert c (temperature) to psi (pressure)"
    )
    assert _error([{"op": "convert", "field": "t", "from": "C", "to": "f"}]).startswith(
        "steps[0].from: expected one of "
    )
    assert _error([{"op": "downsample"}]) == (
        "steps[0]: downsample needs exactly one of every or count"
    )
    assert _error([{"op": "window", "every": 1, "count": 5}]) == (
        "steps[0]: window needs exactly one of every or count"
    )
    assert _error([{"op": "downsample", "every": 0}]) == (
        "steps[0].every: expected a duration > 0, got 0"
    )
    assert _error([{"op": "downsample", "count": 0}]) == (
        "steps[0].count: expected an integer >= 1, got 0"
    )
    assert _error([{"op": "window", "count": 5, "functions": ["median"]}]).startswith(
        "steps[0].functions: expected one of mean, min, max"
    )
    assert _error([{"op": "window", "count": 5, "functions": []}]).startswith(
        "steps[0].functions: expected at least one of"
    )
    assert _error([{"op": "threshold", "field": "t"}]) == (
        "steps[0]: threshold needs above, below or both"
    )
    assert _error([{"op": "filter", "field": "t", "min": 5, "max": 1}]) == (
        "steps[0].max: expected a number >= min (5), got 1"
    )
    assert _error([{"op": "deadband", "delta": -1}]) == (
        "steps[0].delta: expected a number >= 0, got -1"
    )
    assert _error([{"op": "hash", "fields": ["a"], "length": 65}]) == (
        "steps[0].length: expected an integer from 1 to 64, got 65"
    )


def test_validate_rules_name_the_field_and_the_key():
    def validate(fields, on_fail=None):
        spec = {"op": "validate", "fields": fields}
        if on_fail is not None:
            spec["on_fail"] = on_fail
        return _error([spec])

    assert validate({"t": {"type": "float"}}) == (
        "steps[0].fields.t.type: expected one of number, integer, string, bool, got 'float'"
    )
    assert validate({"t": {"type": "number", "unit": "c"}}) == (
        "steps[0].fields.t.unit: unknown key, expected one of type, min, max, required"
    )
    assert validate({"t": {"type": "string", "min": 1}}) == (
        'steps[0].fields.t.min: needs type = "number" or "integer"'
    )
    assert validate({"t": {"type": "number", "min": "low"}}) == (
        "steps[0].fields.t.min: expected a number, got 'low'"
    )
    assert validate({"t": {"type": "number", "min": 5, "max": 1}}) == (
        "steps[0].fields.t.max: expected a number >= min (5), got 1"
    )
    assert validate({"t": {"required": "yes"}}) == (
        "steps[0].fields.t.required: expected true or false, got 'yes'"
    )
    assert validate({"t": 3}) == (
        "steps[0].fields.t: expected a table of type, min, max, required, got 3"
    )
    assert validate({}) == "steps[0].fields: expected a non-empty table, got a table"
    assert validate({"t": {"type": "number"}}, on_fail="skip").startswith(
        "steps[0].on_fail: expected one of drop, flag"
    )


def test_all_errors_are_reported_at_once():
    message = _error([{"op": "scale"}, {"op": "drop"}])
    assert message == "steps[0].field: required for scale; steps[1].fields: required for drop"


def test_check_step_returns_param_and_message():
    assert check_step({"op": "drop", "fields": ["a"]}) == []
    assert check_step({"op": "drop"}) == [("fields", "required for drop")]
    assert check_step({"op": "downsample"}) == [
        (None, "downsample needs exactly one of every or count")
    ]


def test_step_parameters_table_shape():
    ops = set(STEP_PARAMETERS)
    expected_ops = (
        "rename scale convert filter threshold deadband downsample window drop hash validate"
    )
    assert ops == set(expected_ops.split())
    for op, params in STEP_PARAMETERS.items():
        for name, described in params.items():
            kind, required = described
            assert kind in TYPES, (op, name, kind)
            assert required is True or required is False
    assert STEP_PARAMETERS["scale"]["field"] == ("string", True)
    assert STEP_PARAMETERS["downsample"]["every"] == ("duration", False)


def test_minimal_specs_build_and_each_required_parameter_is_enforced():
    minimal = {
        "rename": {"map": {"a": "b"}},
        "scale": {"field": "t"},
        "convert": {"field": "t", "from": "c", "to": "f"},
        "filter": {"field": "t"},
        "threshold": {"field": "t", "above": 1},
        "deadband": {"delta": 1},
        "downsample": {"count": 2},
        "window": {"count": 2},
        "drop": {"fields": ["a"]},
        "hash": {"fields": ["a"]},
        "validate": {"fields": {"t": {"type": "number"}}},
    }
    assert sorted(minimal) == pipeline_module.STEP_OPS
    for op, params in minimal.items():
        spec = dict(params, op=op)
        Pipeline([spec])
        for name, (_, required) in STEP_PARAMETERS[op].items():
            if required:
                without = dict(spec)
                del without[name]
                assert _error([without]) == f"steps[0].{name}: required for {op}"


def test_units_table_names_quantities():
    quantities = {unit[0] for unit in UNITS.values()}
    assert quantities == {"temperature", "pressure", "length", "speed", "mass"}
    for name in ("c", "f", "k", "pa", "hpa", "kpa", "bar", "psi", "mmhg", "mm", "cm", "m"):
        assert name in UNITS
    for name in ("km", "in", "ft", "mi", "m_s", "km_h", "mph", "knots", "g", "kg", "lb"):
        assert name in UNITS
    assert pipeline_module.STEP_CHOICES["convert"]["to"] == sorted(UNITS)


def test_steps_change_the_reading_in_place():
    reading = _reading({"t": 1})
    out = Pipeline([{"op": "rename", "map": {"t": "x"}}]).process(reading)
    assert out[0] is reading and reading["data"] == {"x": 1}


# A validate step first, as a preset would declare it: id text, t a number in range, n an
# integer, on a bool, t required.
TYPED_STEPS = [
    {
        "op": "validate",
        "fields": {
            "id": {"type": "string"},
            "t": {"type": "number", "min": -40, "max": 85, "required": True},
            "n": {"type": "integer"},
            "on": {"type": "bool"},
        },
    },
    {"op": "scale", "field": "t", "factor": 2},
]


def test_declared_types_come_from_the_validate_steps_a_pipeline_starts_with():
    assert declared_types(TYPED_STEPS) == {
        "id": "string",
        "t": "number",
        "n": "integer",
        "on": "bool",
    }
    later = [{"op": "rename", "map": {"a": "b"}}] + TYPED_STEPS
    assert declared_types(later) == {}  # it judges renamed fields, not what was parsed
    first = {"op": "validate", "fields": {"t": {"type": "integer"}, "m": {"required": True}}}
    assert declared_types([first] + TYPED_STEPS) == {
        "t": "integer",
        "id": "string",
        "n": "integer",
        "on": "bool",
    }
    assert declared_types([]) == {} and declared_types(None) == {}


def _typed_run(format, lines, **options):
    """Parse each line with the declared types and run the pipeline: (kept data, counters)."""
    parse = make_parser(format, types=declared_types(TYPED_STEPS), **options)
    pipeline = Pipeline(TYPED_STEPS)
    kept = []
    for line in lines:
        for reading in pipeline.process(_reading(parse(line))):
            kept.append(reading["data"])
    return kept, pipeline.counters()


def test_typed_validation_of_csv_lines_counts_exactly():
    lines = ["007,21.5,7,true", "008,hot,7,1", "009,90,7,0", "010,20,7.5,yes", "abc,def,x,y"]
    lines += [",,,", "011,-40,-3,FALSE"]
    kept, counters = _typed_run("csv", lines, fields=["id", "t", "n", "on"])
    assert kept == [
        {"id": "007", "t": 43.0, "n": 7, "on": True},
        {"id": "011", "t": -80, "n": -3, "on": False},
    ]
    # An empty cell is a value of nothing (None): a type failure, not a missing field.
    assert counters == {
        "type:t": 3,  # hot, def, empty
        "range:t": 1,  # 90
        "type:n": 3,  # 7.5, x, empty
        "type:on": 3,  # yes, y, empty
        "type:id": 1,  # empty; "abc" is a string
    }


def test_typed_validation_of_kv_lines_counts_exactly():
    lines = ["id=007 t=21.5 n=7 on=1", 'id=8 t="21.5" n=7', "t=90", "n=7 on=0", "id=x t=1 on=2"]
    kept, counters = _typed_run("kv", lines)
    assert kept == [{"id": "007", "t": 43.0, "n": 7, "on": True}]
    # A quoted value is text: t="21.5" is no number. on=2 is neither 1 nor 0.
    assert counters == {"type:t": 1, "range:t": 1, "missing:t": 1, "type:on": 1}


def test_typed_validation_of_json_lines_counts_exactly():
    lines = ['{"id": "007", "t": 21.5, "n": 7, "on": true}', '{"id": 7, "t": "21.5"}']
    lines += ['{"t": 1, "n": 7.0, "on": 1}', "{}"]
    kept, counters = _typed_run("json", lines)
    assert kept == [{"id": "007", "t": 43.0, "n": 7, "on": True}]
    assert counters == {
        "type:id": 1,
        "type:t": 1,
        "type:n": 1,
        "type:on": 1,
        "empty": 1,
        "missing:t": 1,
    }
