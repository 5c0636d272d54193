"""step_chain: the unchecked pipeline a board runs, its op -> module map and what it loads."""

from gateway.core import (
    step_fields,
    step_hash,
    step_linear,
    step_numbers,
    step_validate,
    step_windows,
)
from gateway.core.pipeline import Pipeline
from gateway.core.step_chain import STEP_MODULES, StepChain, build_step, declared_types
from gateway.core.steps import STEP_OPS

FAMILIES = {
    "step_fields": step_fields,
    "step_hash": step_hash,
    "step_linear": step_linear,
    "step_numbers": step_numbers,
    "step_validate": step_validate,
    "step_windows": step_windows,
}


def _reading(data):
    return {"gateway": "g", "device": "d1", "stream": "env", "seq": 0, "ts": 1.0, "data": data}


def test_every_op_has_a_module_and_each_module_builds_exactly_its_ops():
    assert sorted(STEP_MODULES) == STEP_OPS
    for name, family in FAMILIES.items():
        mapped = sorted(op for op, module in STEP_MODULES.items() if module == name)
        assert sorted(family.FACTORIES) == mapped, name
    assert sorted(set(STEP_MODULES.values())) == sorted(FAMILIES)


def test_build_step_gives_the_op_s_step_from_its_family():
    step = build_step({"op": "scale", "field": "t", "factor": 2.0})
    assert isinstance(step, step_linear.Linear)
    assert isinstance(build_step({"op": "hash", "fields": ["id"]}), step_hash.Hash)


def test_a_chain_runs_validated_specs_as_the_checked_pipeline_does():
    specs = [
        {"op": "scale", "field": "t", "factor": 0.1},
        {"op": "rename", "map": {"h": "humidity"}},
        {"op": "filter", "field": "t", "min": 0},
    ]
    for kind in (StepChain, Pipeline):
        chain = kind(specs)
        assert chain.process(_reading({"t": 215, "h": 40})) == [
            _reading({"t": 21.5, "humidity": 40})
        ]
        assert chain.process(_reading({"t": -5})) == []
        assert chain.flush() == [] and chain.counters() == {}


def test_the_chain_checks_nothing_the_pipeline_refuses():
    spec = {"op": "drop", "fields": ["a"], "extra": 1}  # validated away on the Pi
    assert StepChain([spec]).process(_reading({"a": 1, "b": 2})) == [_reading({"b": 2})]
    try:
        Pipeline([spec])
    except ValueError as error:
        assert str(error).startswith("steps[0].extra: unknown parameter for drop")
    else:
        raise AssertionError("Pipeline took an unknown parameter")


def test_declared_types_is_the_one_the_pipeline_module_exports():
    from gateway.core import pipeline

    assert pipeline.declared_types is declared_types
    steps = [{"op": "validate", "fields": {"t": {"type": "number"}}}]
    assert declared_types(steps) == {"t": "number"}
