"""Run a preset's transform steps over readings, in order."""

from gateway.core.steps import (
    STEP_CHOICES,
    STEP_FACTORIES,
    STEP_OPS,
    STEP_PARAMETERS,
    WINDOW_FUNCTIONS,
    check_step,
    declared_types,
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


class Pipeline:
    """Steps built from validated specs; process() gives 0, 1 or more readings per reading.

    A bad spec raises ValueError naming each problem as "steps[i].param: expected ..., got
    ...". Steps change the reading passed in (see gateway.core.steps).
    """

    def __init__(self, step_specs):
        errors = []
        for index, spec in enumerate(step_specs or []):
            for param, message in check_step(spec):
                where = f"steps[{index}]" if param is None else f"steps[{index}].{param}"
                errors.append(where + ": " + message)
        if errors:
            raise ValueError("; ".join(errors))
        self.steps = [STEP_FACTORIES[spec["op"]](spec) for spec in step_specs or []]
        self._process = [step.process for step in self.steps]

    def process(self, reading):
        for process in self._process:
            reading = process(reading)
            if reading is None:
                return []
        return [reading]

    def counters(self):
        """What steps counted (validate's failed checks by reason and field), merged."""
        merged = {}
        for step in self.steps:
            for reason, count in getattr(step, "counters", {}).items():
                merged[reason] = merged.get(reason, 0) + count
        return merged

    def flush(self):
        """What stateful steps still hold, passed through the steps after them."""
        carried = []
        for step in self.steps:
            passed = []
            for reading in carried:
                reading = step.process(reading)
                if reading is not None:
                    passed.append(reading)
            flush = getattr(step, "flush", None)
            if flush is not None:
                passed.extend(flush())
            carried = passed
        return carried
