"""The steps that rename or remove fields: rename, drop."""


class Rename:
    """Give fields new names; all renames of one step happen at once, so a swap works."""

    def __init__(self, spec):
        self.pairs = list(spec["map"].items())

    def process(self, reading):
        data = reading["data"]
        moved = None
        for old, new in self.pairs:
            if old in data:
                if moved is None:
                    moved = {}
                moved[new] = data.pop(old)
        if moved:
            data.update(moved)
        return reading


class Drop:
    """Remove fields (privacy)."""

    def __init__(self, spec):
        self.fields = list(spec["fields"])

    def process(self, reading):
        data = reading["data"]
        for field in self.fields:
            data.pop(field, None)
        return reading


FACTORIES = {"rename": Rename, "drop": Drop}
