"""The steps that thin or aggregate a stream over time or counts: downsample, window."""

from gateway.core.step_values import is_number, stream_key

DEFAULT_WINDOW_FUNCTIONS = ["mean", "min", "max", "count"]


class DownsampleEvery:
    """Keep the first reading of each `every`-second interval, on a grid from the first kept.

    The grid keeps the average rate at one per interval despite jitter; a clock stepping
    back by more than an interval restarts it instead of muting the stream.
    """

    def __init__(self, every):
        self.every = every
        self.due = {}

    def process(self, reading):
        ts = reading["ts"]
        key = stream_key(reading)
        due = self.due.get(key)
        if due is not None and due - self.every <= ts < due:
            return None
        if due is None or ts < due:
            self.due[key] = ts + self.every
        else:
            self.due[key] = due + self.every * (int((ts - due) / self.every) + 1)
        return reading


class DownsampleCount:
    """Keep the 1st, (n+1)th, (2n+1)th ... reading."""

    def __init__(self, count):
        self.count = count
        self.seen = {}

    def process(self, reading):
        key = stream_key(reading)
        seen = self.seen.get(key, 0)
        self.seen[key] = 0 if seen + 1 >= self.count else seen + 1
        return reading if seen == 0 else None


def make_downsample(spec):
    if spec.get("every") is not None:
        return DownsampleEvery(spec["every"])
    return DownsampleCount(spec["count"])


class Window:
    """Aggregate numeric fields per (device, stream) over time or count windows.

    A closed window becomes one reading: the envelope of its last reading with data
    {"<field>_<function>": value}. Time windows are aligned to multiples of `every` since
    the epoch (every=60 gives clock minutes) and close when a reading at or past their end
    arrives; count windows close on their count-th reading; flush() closes the rest.
    """

    def __init__(self, spec):
        self.every = spec.get("every")
        self.count = spec.get("count")
        fields = spec.get("fields")
        self.fields = None if fields is None else list(fields)
        self.functions = list(spec.get("functions") or DEFAULT_WINDOW_FUNCTIONS)
        self.open = {}  # key -> [end ts or None, readings seen, last reading, {field: stats}]

    def process(self, reading):
        key = stream_key(reading)
        window = self.open.get(key)
        closed = None
        if window is not None and self.every is not None and reading["ts"] >= window[0]:
            closed = self._close(key, window)
            window = None
        if window is None:
            window = [self._end(reading["ts"]), 0, None, {}]
            self.open[key] = window
        self._add(window, reading)
        if self.count is not None and window[1] >= self.count:
            closed = self._close(key, window)
        return closed

    def flush(self):
        readings = []
        for key in list(self.open):
            closed = self._close(key, self.open[key])
            if closed is not None:
                readings.append(closed)
        return readings

    def _end(self, ts):
        if self.every is None:
            return None
        return ts - ts % self.every + self.every

    def _add(self, window, reading):
        window[1] += 1
        window[2] = reading
        stats = window[3]
        data = reading["data"]
        names = data if self.fields is None else self.fields
        for name in names:
            value = data.get(name)
            if not is_number(value):
                continue
            entry = stats.get(name)
            if entry is None:
                stats[name] = [1, value, value, value, value, value]
                continue
            entry[0] += 1
            entry[1] += value
            if value < entry[2]:
                entry[2] = value
            if value > entry[3]:
                entry[3] = value
            entry[5] = value

    def _close(self, key, window):
        del self.open[key]
        if not window[3]:
            return None  # nothing numeric to aggregate
        data = {}
        for name, (count, total, low, high, first, last) in window[3].items():
            for function in self.functions:
                if function == "mean":
                    value = total / count
                elif function == "min":
                    value = low
                elif function == "max":
                    value = high
                elif function == "count":
                    value = count
                elif function == "sum":
                    value = total
                elif function == "first":
                    value = first
                else:
                    value = last
                data[name + "_" + function] = value
        reading = window[2]
        reading["data"] = data
        return reading


FACTORIES = {"downsample": make_downsample, "window": Window}
