"""Run validated step specs over readings, each step's module imported when first used.

The board's pipeline: it checks nothing (host-tools compiled its config from a validated
gateway.toml), and it loads only the step families its preset uses, so the validation
tables (gateway.core.steps) and the unused steps cost it no heap. The Pi's pipeline
(gateway.core.pipeline.Pipeline) checks the specs first and then runs this.
"""

# op -> the module holding its step (each has FACTORIES = {op: factory(spec)})
STEP_MODULES = {
    "rename": "step_fields",
    "drop": "step_fields",
    "hash": "step_hash",
    "scale": "step_linear",
    "convert": "step_linear",
    "filter": "step_numbers",
    "threshold": "step_numbers",
    "deadband": "step_numbers",
    "downsample": "step_windows",
    "window": "step_windows",
    "validate": "step_validate",
}


def _family(name):
    # Plain imports, not __import__(name): host-tools finds a board's core files by reading them.
    if name == "step_fields":
        from gateway.core import step_fields as family
    elif name == "step_linear":
        from gateway.core import step_linear as family
    elif name == "step_numbers":
        from gateway.core import step_numbers as family
    elif name == "step_windows":
        from gateway.core import step_windows as family
    elif name == "step_hash":
        from gateway.core import step_hash as family
    elif name == "step_validate":
        from gateway.core import step_validate as family
    else:
        raise ValueError("no step module " + repr(name))
    return family


def build_step(spec):
    """The step for one validated spec (a dict with "op" and its parameters)."""
    op = spec["op"]
    return _family(STEP_MODULES[op]).FACTORIES[op](spec)


def declared_types(step_specs):
    """{field: type} declared by the validate steps a pipeline starts with: they see the
    fields as parsed, so a text format's parser can convert those fields to their types.
    A validate step after another step judges transformed data and declares nothing here."""
    types = {}
    for spec in step_specs or ():
        if spec.get("op") != "validate":
            break
        for name, rule in spec.get("fields", {}).items():
            kind = rule.get("type") if isinstance(rule, dict) else None
            if kind is not None and name not in types:
                types[name] = kind
    return types


class StepChain:
    """Steps built from validated specs; process() gives 0, 1 or more readings per reading.

    Steps change reading["data"] in place: an ingest hands each reading to one chain only,
    and copying would cost the hot path.
    """

    def __init__(self, step_specs):
        self.steps = [build_step(spec) for spec in step_specs or []]
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
