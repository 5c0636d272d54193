"""Run a preset's transform steps over readings, in order, after checking their specs."""

from gateway.core.step_chain import StepChain, declared_types
from gateway.core.steps import (
    STEP_CHOICES,
    STEP_OPS,
    STEP_PARAMETERS,
    WINDOW_FUNCTIONS,
    check_step,
)
from gateway.core.units import UNITS

__all__ = [
    "STEP_CHOICES",
    "STEP_OPS",
    "STEP_PARAMETERS",
    "UNITS",
    "WINDOW_FUNCTIONS",
    "Pipeline",
    "check_step",
    "declared_types",
]


class Pipeline(StepChain):
    """Steps built from specs; process() gives 0, 1 or more readings per reading.

    A bad spec raises ValueError naming each problem as "steps[i].param: expected ..., got
    ...". Steps change the reading passed in (see gateway.core.step_chain).
    """

    def __init__(self, step_specs):
        errors = []
        for index, spec in enumerate(step_specs or []):
            for param, message in check_step(spec):
                where = f"steps[{index}]" if param is None else f"steps[{index}].{param}"
                errors.append(where + ": " + message)
        if errors:
            raise ValueError("; ".join(errors))
        super().__init__(step_specs)
