"""Why a line gave no reading: ParseError (bad input) or Skipped (good input, no reading)."""


class ParseError(ValueError):
    """A line could not be parsed; str(error) and .reason say why in plain words."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


class Skipped(ParseError):
    """A well-formed line that gives no reading by design; not a parse error.

    .kind says what was skipped (an NMEA sentence type such as "GSV" or "PGRME", or "header"
    for a CSV header line), so the caller can count skipped lines by kind. .held is True for
    one part of a multi-sentence group (GSV) kept until the last part completes the reading.
    It subclasses ParseError so that a caller that knows only ParseError still drops the line.
    """

    def __init__(self, reason, kind, held=False):
        super().__init__(reason)
        self.kind = kind
        self.held = held


def clip(text):
    """Input quoted in an error message, cut so one bad line cannot flood the log."""
    return text if len(text) <= 40 else text[:37] + "..."
