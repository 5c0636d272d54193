"""Topic templates for readings and MQTT-style topic filters over them."""

PLACEHOLDERS = ("gateway", "device", "stream")

_CACHE_LIMIT = 1024  # templates, names and topics repeat; bounded so hostile input cannot grow it

_templates = {}  # template -> (format string with positional fields, envelope keys)
_safe_names = {}  # raw value -> value fit for one topic level
_topics = {}  # (template, gateway, device, stream) -> rendered topic


def check_topic_template(template):
    """Raise ValueError unless the template uses only {gateway}, {device} and {stream}."""
    _compile_template(template)


def _compile_template(template):
    if not isinstance(template, str) or not template:
        raise ValueError("topic template must be a non-empty string")
    pieces = []
    literal = []
    keys = []
    rest = template
    while rest:
        start = rest.find("{")
        stray = rest.find("}")
        if stray >= 0 and (start < 0 or stray < start):
            raise ValueError(f"unmatched '}}' in topic template {template!r}")
        if start < 0:
            pieces.append(rest)
            literal.append(rest)
            break
        end = rest.find("}", start)
        if end < 0:
            raise ValueError(f"unmatched '{{' in topic template {template!r}")
        name = rest[start + 1 : end]
        if name not in PLACEHOLDERS:
            expected = "{gateway}, {device} or {stream}"
            found = "{" + name + "}"
            raise ValueError(
                f"unknown placeholder {found} in topic template {template!r}, expected {expected}"
            )
        pieces.append(rest[:start])
        literal.append(rest[:start])
        pieces.append("{" + str(len(keys)) + "}")
        keys.append(name)
        rest = rest[end + 1 :]
    text = "".join(literal)
    if "+" in text or "#" in text:
        raise ValueError(f"topic template {template!r} must not contain the wildcards + or #")
    compiled = ("".join(pieces), tuple(keys))
    if len(_templates) >= _CACHE_LIMIT:
        _templates.clear()
    _templates[template] = compiled
    return compiled


def _safe_level(value):
    """A reading's name as one topic level: no '/', '+' or '#' may leak in from a device."""
    if type(value) is not str:
        value = "" if value is None else str(value)
    safe = _safe_names.get(value)
    if safe is not None:
        return safe
    safe = value.replace("/", "_").replace("+", "_").replace("#", "_").replace("\0", "_")
    if len(_safe_names) >= _CACHE_LIMIT:
        _safe_names.clear()
    _safe_names[value] = safe
    return safe


def render_topic(template, reading):
    """The template with {gateway}, {device} and {stream} taken from the reading."""
    # Once per reading in the sinks: a device's readings render the same topic, so look
    # the finished topic up by the names that fill it.
    names = (template, reading.get("gateway"), reading.get("device"), reading.get("stream"))
    try:
        topic = _topics.get(names)
    except TypeError:  # a name that cannot be a key (a device sent a list): not cached
        return _render(template, reading)
    if topic is None:
        topic = _render(template, reading)
        if not all(name is None or type(name) is str for name in names):
            return topic  # 1, 1.0 and True are one key but three topics: not cached
        if len(_topics) >= _CACHE_LIMIT:
            _topics.clear()
        _topics[names] = topic
    return topic


def _render(template, reading):
    compiled = _templates.get(template)
    if compiled is None:
        compiled = _compile_template(template)
    fmt, keys = compiled
    if not keys:
        return fmt
    return fmt.format(*[_safe_level(reading.get(key)) for key in keys])


# -- filters ------------------------------------------------------------------------------------


def check_filter(topic_filter):
    """Raise ValueError unless this is a valid MQTT topic filter."""
    if not isinstance(topic_filter, str) or not topic_filter:
        raise ValueError("topic filter must be a non-empty string")
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if level == "#":
            if index != len(levels) - 1:
                raise ValueError(f"'#' must be the last level of topic filter {topic_filter!r}")
        elif level != "+" and ("#" in level or "+" in level):
            raise ValueError(f"wildcards must fill a whole level in topic filter {topic_filter!r}")
    return levels


def _levels_match(levels, topic):
    names = topic.split("/")
    # MQTT: a filter starting with a wildcard does not match $SYS-style topics
    if names[0][:1] == "$" and levels[0] in ("+", "#"):
        return False
    count = len(names)
    for index, level in enumerate(levels):
        if level == "#":
            return True  # also matches the parent: "a/#" matches "a"
        if index >= count:
            return False
        if level != "+" and level != names[index]:
            return False
    return len(levels) == count


def topic_matches(topic_filter, topic):
    """Whether topic matches the MQTT filter ('+' one level, '#' this level and below)."""
    return _levels_match(check_filter(topic_filter), topic)


class TopicFilter:
    """A set of MQTT topic filters; matches() is true if any matches (no filters: all do)."""

    def __init__(self, filters):
        self.filters = list(filters or [])
        self._exact = set()
        self._patterns = []
        for topic_filter in self.filters:
            levels = check_filter(topic_filter)
            if "+" in levels or "#" in levels:
                self._patterns.append(levels)
            else:
                self._exact.add(topic_filter)
        self._seen = {}

    def matches(self, topic):
        if not self.filters:
            return True
        known = self._seen.get(topic)
        if known is not None:
            return known
        result = topic in self._exact or any(_levels_match(p, topic) for p in self._patterns)
        if len(self._seen) >= _CACHE_LIMIT:
            self._seen = {}
        self._seen[topic] = result
        return result
