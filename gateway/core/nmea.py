"""NMEA 0183 sentences from GPS receivers, weather stations and marine sensors as named values."""

from gateway.core.parse_errors import ParseError, Skipped, clip

# The sentence types this parser turns into readings; "sentences = [...]" picks among them.
SENTENCES = (
    "GGA",
    "RMC",
    "GLL",
    "VTG",
    "GSA",
    "GSV",
    "ZDA",
    "GST",
    "HDT",
    "TXT",
    "XDR",
    "MWV",
    "MDA",
)

# Constellation by talker id, and by the NMEA 4.1 system id of GSA (GSV: by talker only).
_SYSTEM_BY_TALKER = {
    "GP": "GPS",
    "GL": "GLONASS",
    "GA": "Galileo",
    "GB": "BeiDou",
    "BD": "BeiDou",
    "GQ": "QZSS",
    "QZ": "QZSS",
    "GI": "NavIC",
}
_SYSTEM_BY_ID = {
    "1": "GPS",
    "2": "GLONASS",
    "3": "Galileo",
    "4": "BeiDou",
    "5": "QZSS",
    "6": "NavIC",
}

_KNOT_IN_M_S = 1852.0 / 3600.0
_SPEED_IN_M_S = {"N": _KNOT_IN_M_S, "K": 1 / 3.6, "M": 1.0, "S": 0.44704}  # MWV speed units
_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ALNUM = _UPPER + "0123456789"
_MAX_GROUPS = 16  # GSV groups in progress at once (talker x signal); more is garbage


def nmea_parser(sentences=None):
    """Return parse(line) -> dict for NMEA sentences; sentences picks the types to emit."""
    wanted = _wanted(sentences)
    groups = {}  # GSV groups in progress, per talker and signal

    def parse_nmea(line):
        talker, kind, parts = split_sentence(line)
        if kind not in _HANDLERS:
            raise Skipped(f"NMEA sentence {kind} is not supported, skipped", kind)
        if kind not in wanted:
            raise Skipped(f"NMEA sentence {kind} is not in sentences, skipped", kind)
        if kind == "GSV":
            data = _gsv(parts, talker, groups)
        elif kind == "GSA":
            data = _gsa(parts, talker)
        else:
            data = _HANDLERS[kind](parts)
        data["stream"] = kind.lower()
        data["talker"] = talker
        return data

    return parse_nmea


def _wanted(sentences):
    if sentences is None:
        return SENTENCES
    wanted = []
    for name in sentences:
        kind = str(name).upper()
        if kind not in SENTENCES:
            raise ValueError(
                "unknown NMEA sentence {!r}, expected some of {}".format(name, ", ".join(SENTENCES))
            )
        wanted.append(kind)
    if not wanted:
        raise ValueError("sentences must name at least one NMEA sentence")
    return tuple(wanted)


def split_sentence(line):
    """Check '$', checksum and address; return (talker, type, fields) or raise."""
    line = line.strip()
    if line[0] != "$":
        raise ParseError("NMEA sentence must start with '$'")
    star = line.rfind("*")
    if star < 0:
        raise ParseError("NMEA checksum missing")
    body = line[1:star]
    _check_sum(body, line[star + 1 :])
    parts = body.split(",")
    address = parts[0]
    if address[:1] == "P" and len(address) >= 4 and not address.strip(_ALNUM):
        # proprietary ($PGRME, $PUBX, $PMTK001): the maker's format, counted by maker id
        maker = address[:4]
        raise Skipped(f"proprietary NMEA sentence {maker} skipped", maker)
    if len(address) != 5 or address[:2].strip(_UPPER) or address[2:].strip(_ALNUM):
        raise ParseError(
            f"bad NMEA address {clip(address)!r}, expected a talker and a type like GPGGA"
        )
    return address[:2], address[2:], parts


def _check_sum(body, given):
    checksum = 0
    for char in body:
        checksum ^= ord(char)
    try:
        valid = len(given) == 2 and int(given, 16) == checksum
    except ValueError:
        valid = False
    if not valid:
        raise ParseError(f"NMEA checksum mismatch: computed {checksum:02X}, line says {given!r}")


# -- field helpers ----------------------------------------------------------------------------


def _need(parts, count, kind):
    if len(parts) < count:
        raise ParseError(f"{kind} sentence has {len(parts)} fields, expected at least {count}")


def _padded(parts, count):
    """Fields beyond the end read as empty: receivers leave out trailing optional fields."""
    return parts + [""] * (count - len(parts)) if len(parts) < count else parts


def _is_digits(text):
    # ASCII only: str.isdigit() accepts superscripts and other scripts that int() refuses
    return text != "" and not text.strip("0123456789")


def _number(text, kind, what):
    if not text:
        return None
    try:
        return kind(text)
    except ValueError:
        raise ParseError(f"bad NMEA {what} {clip(text)!r}") from None


def _float(text, what):
    value = _number(text, float, what)
    if value is not None and value - value != 0:
        raise ParseError(f"bad NMEA {what} {clip(text)!r}")  # nan, inf: no JSON number
    return value


def _letter(text, allowed, what):
    """One of the allowed letters, or None when the field is empty."""
    if not text:
        return None
    if len(text) != 1 or text not in allowed:
        raise ParseError(f"bad NMEA {what} {clip(text)!r}, expected one of {', '.join(allowed)}")
    return text


def _mode(text):
    """NMEA 2.3+ mode indicator (A autonomous, D differential, E estimated, N not valid, ...)."""
    if not text:
        return None
    if len(text) != 1 or text not in _UPPER:
        raise ParseError(f"bad NMEA mode indicator {clip(text)!r}")
    return text


def _unit(text, letter, what):
    # the unit letter after a value: empty, or the one this field is defined in
    if text and text != letter:
        raise ParseError(f"bad NMEA {what} unit {clip(text)!r}, expected {letter}")


def degrees(text, hemisphere, what, degree_digits):
    """ddmm.mmmm / dddmm.mmmm plus N/S/E/W -> signed decimal degrees (7 decimals, ~1 cm)."""
    if not text:
        return None
    dot = text.find(".")
    whole = text if dot < 0 else text[:dot]
    if len(whole) != degree_digits + 2 or not _is_digits(whole):
        raise ParseError(f"bad NMEA {what} {clip(text)!r}")
    try:
        minutes = float(text[degree_digits:])
    except ValueError:
        raise ParseError(f"bad NMEA {what} {clip(text)!r}") from None
    value = int(whole[:degree_digits]) + minutes / 60
    allowed = "NS" if degree_digits == 2 else "EW"
    if len(hemisphere) != 1 or hemisphere not in allowed:
        raise ParseError(f"bad NMEA {what} hemisphere {clip(hemisphere)!r}")
    if hemisphere in "SW":
        value = -value
    return round(value, 7)


def _position(parts, index):
    return (
        degrees(parts[index], parts[index + 1], "latitude", 2),
        degrees(parts[index + 2], parts[index + 3], "longitude", 3),
    )


def clock(text):
    """hhmmss[.sss] -> "hh:mm:ss[.sss]"."""
    if not text:
        return None
    whole = text[:6]
    fraction = text[6:]
    if (
        len(whole) != 6
        or not _is_digits(whole)
        or (fraction and (fraction[0] != "." or not _is_digits(fraction[1:])))
        or int(whole[:2]) > 23
        or int(whole[2:4]) > 59
        or int(whole[4:6]) > 60  # 60: a leap second
    ):
        raise ParseError(f"bad NMEA time {clip(text)!r}")
    return whole[0:2] + ":" + whole[2:4] + ":" + whole[4:6] + fraction


def _date(text):
    """ddmmyy -> "yyyy-mm-dd" (years 80-99 are 19xx, GPS did not exist before 1980)."""
    if not text:
        return None
    if len(text) != 6 or not _is_digits(text):
        raise ParseError(f"bad NMEA date {clip(text)!r}")
    year = int(text[4:6])
    year += 1900 if year >= 80 else 2000
    return _iso_date(year, int(text[2:4]), int(text[0:2]), text)


def _iso_date(year, month, day, text):
    if not (1 <= month <= 12 and 1 <= day <= 31):
        raise ParseError(f"bad NMEA date {clip(text)!r}")
    return f"{year:04d}-{month:02d}-{day:02d}"


def _signed(text, direction, negative, what):
    """A magnitude and its direction letter (E/W, L/R) as one signed number."""
    value = _float(text, what)
    if value is not None and direction == negative:
        value = -value
    return value


def _system(talker, system_id=""):
    return _SYSTEM_BY_ID.get(system_id) or _SYSTEM_BY_TALKER.get(talker)


# -- position and velocity --------------------------------------------------------------------


def _gga(parts):
    # $xxGGA,time,lat,N,lon,E,quality,satellites,hdop,altitude,M,geoid,M,age,station
    _need(parts, 11, "GGA")
    parts = _padded(parts, 15)
    lat, lon = _position(parts, 2)
    _unit(parts[10], "M", "altitude")
    _unit(parts[12], "M", "geoid separation")
    return {
        "time": clock(parts[1]),
        "lat": lat,
        "lon": lon,
        "fix_quality": _number(parts[6], int, "fix quality"),
        "satellites": _number(parts[7], int, "satellites"),
        "hdop": _float(parts[8], "hdop"),
        "altitude": _float(parts[9], "altitude"),
        "geoid_separation": _float(parts[11], "geoid separation"),
        "dgps_age": _float(parts[13], "DGPS age"),
        "dgps_station": parts[14] or None,  # an id: "0000" is not the number 0
    }


def _rmc(parts):
    # $xxRMC,time,status,lat,N,lon,E,speed,course,date,variation,E[,mode[,nav status]]
    _need(parts, 10, "RMC")
    parts = _padded(parts, 14)
    lat, lon = _position(parts, 3)
    knots = _float(parts[7], "speed")
    return {
        "time": clock(parts[1]),
        "status": _letter(parts[2], "AV", "RMC status"),
        "lat": lat,
        "lon": lon,
        "speed_knots": knots,
        "speed_km_h": None if knots is None else round(knots * 1.852, 3),
        "course": _float(parts[8], "course"),
        "date": _date(parts[9]),
        "magnetic_variation": _signed(
            parts[10], _letter(parts[11], "EW", "variation"), "W", "variation"
        ),
        "mode": _mode(parts[12]),
        "nav_status": _letter(parts[13], "SCUV", "navigational status"),
    }


def _gll(parts):
    # $xxGLL,lat,N,lon,E[,time,status[,mode]]
    _need(parts, 5, "GLL")
    parts = _padded(parts, 8)
    lat, lon = _position(parts, 1)
    return {
        "lat": lat,
        "lon": lon,
        "time": clock(parts[5]),
        "status": _letter(parts[6], "AV", "GLL status"),
        "mode": _mode(parts[7]),
    }


def _vtg(parts):
    # $xxVTG,course,T,course magnetic,M,speed,N,speed,K[,mode]
    _need(parts, 7, "VTG")
    parts = _padded(parts, 10)
    for index, letter in ((2, "T"), (4, "M"), (6, "N"), (8, "K")):
        _unit(parts[index], letter, f"VTG field {index}")
    return {
        "course": _float(parts[1], "course"),
        "course_magnetic": _float(parts[3], "magnetic course"),
        "speed_knots": _float(parts[5], "speed"),
        "speed_km_h": _float(parts[7], "speed"),
        "mode": _mode(parts[9]),
    }


# -- satellites and accuracy ------------------------------------------------------------------


def _gsa(parts, talker):
    # $xxGSA,selection mode,fix type,12 x satellite id,pdop,hdop,vdop[,system id]
    _need(parts, 18, "GSA")
    ids = [_number(text, int, "satellite id") for text in parts[3:15] if text]
    system_id = parts[18] if len(parts) > 18 else ""
    return {
        "mode": _letter(parts[1], "AM", "GSA selection mode"),
        "fix_type": _number(parts[2], int, "fix type"),
        "satellites_used": len(ids),
        "prns": ids,
        "pdop": _float(parts[15], "pdop"),
        "hdop": _float(parts[16], "hdop"),
        "vdop": _float(parts[17], "vdop"),
        "system": _system(talker, system_id),  # GN: a combined fix, the id tells which
    }


def _gsv(parts, talker, groups):
    # $xxGSV,parts,part,in view,{prn,elevation,azimuth,snr} x up to 4[,signal id]
    _need(parts, 4, "GSV")
    total = _number(parts[1], int, "GSV sentence count")
    number = _number(parts[2], int, "GSV sentence number")
    in_view = _number(parts[3], int, "satellites in view")
    if total is None or number is None or not 1 <= number <= total <= 9 or in_view is None:
        raise ParseError(f"bad GSV sentence numbering {clip(parts[2])!r} of {clip(parts[1])!r}")
    blocks = parts[4:]
    signal = blocks.pop() if len(blocks) % 4 == 1 else ""  # NMEA 4.1 adds a signal id
    if len(blocks) % 4:
        raise ParseError(f"GSV satellite fields come in fours, got {len(blocks)}")
    satellites = [_satellite(blocks[i : i + 4]) for i in range(0, len(blocks), 4) if blocks[i]]
    # one group per talker and signal: a multi-constellation receiver sends them in turn
    key = talker + signal
    group = _group(groups, key, total, number, in_view)
    group["satellites"].extend(satellites)
    if number < total:
        raise Skipped(f"GSV part {number} of {total} held for its group", "GSV", True)
    del groups[key]
    return _gsv_reading(group["satellites"], in_view, talker, signal)


def _group(groups, key, total, number, in_view):
    """The GSV group this part continues (a part 1 starts one); raise when out of order."""
    if number == 1:
        if len(groups) >= _MAX_GROUPS and key not in groups:
            groups.clear()  # only garbage has this many groups open: bound the memory
        groups[key] = {"total": total, "next": 1, "in_view": in_view, "satellites": []}
    group = groups.get(key)
    if group is None or group["total"] != total or group["next"] != number:
        groups.pop(key, None)
        raise ParseError(f"GSV part {number} of {total} without the parts before it")
    if group["in_view"] != in_view:
        del groups[key]
        raise ParseError(
            f"GSV parts disagree on satellites in view ({group['in_view']}, {in_view})"
        )
    group["next"] = number + 1
    return group


def _satellite(block):
    return {
        "prn": _number(block[0], int, "satellite id"),
        "elevation": _number(block[1], int, "elevation"),
        "azimuth": _number(block[2], int, "azimuth"),
        "snr": _number(block[3], int, "SNR"),
    }


def _gsv_reading(satellites, in_view, talker, signal):
    snrs = [sat["snr"] for sat in satellites if sat["snr"] is not None]
    return {
        "satellites_in_view": in_view,
        "satellites_tracked": len(snrs),
        "snr_max": max(snrs) if snrs else None,
        "snr_mean": round(sum(snrs) / len(snrs), 1) if snrs else None,
        "system": _system(talker),
        "signal": signal or None,
        "satellites": satellites,
    }


def _gst(parts):
    # $xxGST,time,rms,sd major,sd minor,orientation,sd lat,sd lon,sd alt
    _need(parts, 9, "GST")
    return {
        "time": clock(parts[1]),
        "rms": _float(parts[2], "rms"),
        "std_major": _float(parts[3], "error ellipse major"),
        "std_minor": _float(parts[4], "error ellipse minor"),
        "orientation": _float(parts[5], "error ellipse orientation"),
        "std_lat": _float(parts[6], "latitude error"),
        "std_lon": _float(parts[7], "longitude error"),
        "std_alt": _float(parts[8], "altitude error"),
    }


# -- time, heading, text ----------------------------------------------------------------------


def _zda(parts):
    # $xxZDA,time,day,month,year,zone hours,zone minutes
    _need(parts, 5, "ZDA")
    parts = _padded(parts, 7)
    day = _number(parts[2], int, "day")
    month = _number(parts[3], int, "month")
    year = _number(parts[4], int, "year")
    date = None
    if day is not None or month is not None or year is not None:
        if day is None or month is None or year is None or len(parts[4]) != 4:
            raise ParseError(f"bad NMEA date {clip(','.join(parts[2:5]))!r}")
        date = _iso_date(year, month, day, ",".join(parts[2:5]))
    return {
        "time": clock(parts[1]),
        "date": date,
        "local_zone_hours": _number(parts[5], int, "local zone hours"),
        "local_zone_minutes": _number(parts[6], int, "local zone minutes"),
    }


def _hdt(parts):
    # $xxHDT,heading,T
    _need(parts, 2, "HDT")
    _unit(parts[2] if len(parts) > 2 else "", "T", "heading")
    return {"heading": _float(parts[1], "heading")}


_TEXT_LEVELS = {"00": "error", "01": "warning", "02": "notice", "07": "user"}


def _txt(parts):
    # $xxTXT,sentences,number,text id,text (u-blox: the id is the message's severity)
    _need(parts, 5, "TXT")
    return {
        "parts": _number(parts[1], int, "TXT sentence count"),
        "part": _number(parts[2], int, "TXT sentence number"),
        "level": _TEXT_LEVELS.get(parts[3], parts[3] or None),
        "text": ",".join(parts[4:]),
    }


# -- weather and transducers ------------------------------------------------------------------

# XDR transducer type -> the word that starts its field name, and its unit letters -> unit names
_XDR_TYPES = {
    "A": ("angle", {"D": "deg"}),
    "C": ("temperature", {"C": "c", "F": "f", "K": "k"}),
    "D": ("distance", {"M": "m"}),
    "F": ("frequency", {"H": "hz"}),
    "G": ("generic", {}),
    "H": ("humidity", {"P": "percent"}),
    "I": ("current", {"A": "a"}),
    "L": ("salinity", {"S": "ppt"}),
    "N": ("force", {"N": "n"}),
    "P": ("pressure", {"B": "bar", "P": "pa", "H": "hpa", "I": "inhg"}),
    "R": ("flow", {"L": "l_s"}),
    "S": ("switch", {}),
    "T": ("tachometer", {"R": "rpm"}),
    "U": ("voltage", {"V": "v"}),
    "V": ("volume", {"M": "m3"}),
}


def _xdr(parts):
    # $xxXDR,{type,value,unit,id} x n: one field per transducer
    quads = parts[1:]
    extra = len(quads) % 4
    if extra and any(quads[-extra:]):  # some stations end with an empty field or two
        raise ParseError(f"XDR fields come in fours (type, value, unit, id), got {len(quads)}")
    if extra:
        quads = quads[:-extra]
    if not quads:
        raise ParseError("XDR sentence has no transducer")
    data = {}
    for i in range(0, len(quads), 4):
        name = _xdr_name(quads[i], quads[i + 2], quads[i + 3])
        if name in data:
            name = _unique(data, name)
        data[name] = _float(quads[i + 1], "XDR value")
    return data


def _xdr_name(kind, unit, ident):
    """temperature_air_c: the transducer's type, its id (when it has one), its unit."""
    if len(kind) != 1 or kind not in _UPPER:
        raise ParseError(f"bad XDR transducer type {clip(kind)!r}")
    word, units = _XDR_TYPES.get(kind, (kind.lower(), {}))
    name = word
    ident = _name_part(ident)
    if ident:
        name += "_" + ident
    if unit:
        name += "_" + units.get(unit, _name_part(unit))
    return name


def _name_part(text):
    """A device's id as a field name part: lower case, anything but letters and digits as _."""
    chars = [char if char.isalpha() or char.isdigit() else "_" for char in text.lower()]
    return "".join(chars).strip("_")


def _unique(data, name):
    number = 2
    while name + "_" + str(number) in data:
        number += 1
    return name + "_" + str(number)


def _mwv(parts):
    # $xxMWV,angle,R|T,speed,K|M|N|S,A|V
    _need(parts, 6, "MWV")
    reference = _letter(parts[2], "RT", "MWV reference")
    speed = _float(parts[3], "wind speed")
    unit = _letter(parts[4], "KMNS", "wind speed unit")
    if speed is not None and unit is None:
        raise ParseError("MWV wind speed without a unit")
    data = {
        "wind_angle": _float(parts[1], "wind angle"),
        "reference": _REFERENCES.get(reference),
        "status": _letter(parts[5], "AV", "MWV status"),
    }
    data.update(_speeds("wind_speed_", speed, unit))
    return data


_REFERENCES = {"R": "relative", "T": "true"}


def _speeds(prefix, speed, unit):
    """One speed in knots, km/h and m/s (the one the device gave exactly, the others rounded)."""
    if speed is None:
        return {prefix + "knots": None, prefix + "km_h": None, prefix + "m_s": None}
    m_s = speed * _SPEED_IN_M_S[unit]
    data = {
        prefix + "knots": round(m_s / _KNOT_IN_M_S, 3),
        prefix + "km_h": round(m_s * 3.6, 3),
        prefix + "m_s": round(m_s, 3),
    }
    given = {"N": "knots", "K": "km_h", "M": "m_s"}.get(unit)
    if given:
        data[prefix + given] = speed
    return data


def _mda(parts):
    # $xxMDA,inHg,I,bar,B,air,C,water,C,rel hum,abs hum,dew point,C,dir true,T,dir mag,M,
    #   knots,N,m/s,M
    _need(parts, 3, "MDA")
    parts = _padded(parts, 21)
    for index, letter in ((2, "I"), (4, "B"), (6, "C"), (8, "C"), (12, "C"), (14, "T"), (16, "M")):
        _unit(parts[index], letter, f"MDA field {index}")
    _unit(parts[18], "N", "MDA field 18")
    _unit(parts[20], "M", "MDA field 20")
    knots = _float(parts[17], "wind speed")
    m_s = _float(parts[19], "wind speed")
    km_h = m_s * 3.6 if m_s is not None else (None if knots is None else knots * 1.852)
    return {
        "pressure_inhg": _float(parts[1], "pressure"),
        "pressure_bar": _float(parts[3], "pressure"),
        "air_temperature": _float(parts[5], "air temperature"),
        "water_temperature": _float(parts[7], "water temperature"),
        "humidity": _float(parts[9], "relative humidity"),
        "absolute_humidity": _float(parts[10], "absolute humidity"),
        "dew_point": _float(parts[11], "dew point"),
        "wind_direction_true": _float(parts[13], "wind direction"),
        "wind_direction_magnetic": _float(parts[15], "wind direction"),
        "wind_speed_knots": knots,
        "wind_speed_km_h": None if km_h is None else round(km_h, 3),
        "wind_speed_m_s": m_s,
    }


_HANDLERS = {
    "GGA": _gga,
    "RMC": _rmc,
    "GLL": _gll,
    "VTG": _vtg,
    "GSA": None,  # needs the talker: called by parse_nmea
    "GSV": None,  # stateful: parse_nmea passes it the groups in progress
    "ZDA": _zda,
    "GST": _gst,
    "HDT": _hdt,
    "TXT": _txt,
    "XDR": _xdr,
    "MWV": _mwv,
    "MDA": _mda,
}
