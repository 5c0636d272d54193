"""NMEA: our portable parser against pynmea2, field by field, on a corpus of real sentences."""

import datetime
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.core.nmea import SENTENCES
from gateway.core.parsers import ParseError, Skipped, make_parser

pynmea2 = pytest.importorskip("pynmea2")

CORPUS = Path(__file__).parent / "vectors" / "nmea"
FILES = sorted(path.name for path in CORPUS.glob("*.nmea"))

# Sentences we reject and pynmea2 reads, by (file, line number): each with why.
REJECTED = {
    ("ublox_neo_m8n.nmea", 4): (
        "GSV part 3 of 3 without the parts before it",
        "the capture starts mid-group: one part alone is no list of satellites in view",
    ),
}

# Where our reading deliberately differs from pynmea2's value (sentence type, field): why.
DIFFERENT = {
    ("GGA", "lat"): "an empty position is None for us, 0.0 for pynmea2 (0 degrees is a place)",
    ("GGA", "lon"): "as lat",
    ("RMC", "speed_km_h"): "computed by us from knots (RMC has knots only), absent in pynmea2",
    ("MWV", "wind_speed_*"): "we give knots, km/h and m/s; pynmea2 the one unit the device used",
    ("GSA", "system"): "the NMEA 4.1 system id, which pynmea2 1.19 does not read",
    ("GSV", "signal"): "an NMEA 4.1 signal id ends the sentence: pynmea2 1.19 takes it for the "
    "PRN of one more satellite, we for the signal",
    ("XDR", "names"): "pynmea2 keeps transducers as a list; we name a field per transducer",
}


def _sentences(name):
    for number, line in enumerate((CORPUS / name).read_text().splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            yield number, line


def _norm(value):
    """One comparable form: numbers as float, times as seconds, dates ISO, '' as None."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime.time):
        return value.hour * 3600 + value.minute * 60 + value.second + value.microsecond / 1e6
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, (int, float, Decimal)):
        return float(value)
    try:
        return float(value)
    except ValueError:
        return value


def _seconds(clock):
    if clock is None:
        return None
    hours, minutes, seconds = clock.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _position(raw, value):
    # DIFFERENT ("GGA", "lat"): an empty field is None for us
    return None if not raw else value


def _signed(value, direction, negative):
    value = _norm(value)
    return -value if value is not None and direction == negative else value


def _prns(msg):
    return [
        float(getattr(msg, f"sv_id{i:02d}")) for i in range(1, 13) if getattr(msg, f"sv_id{i:02d}")
    ]


EXPECTED = {
    "GGA": lambda m: {
        "time": m.timestamp,
        "lat": _position(m.lat, m.latitude),
        "lon": _position(m.lon, m.longitude),
        "fix_quality": m.gps_qual,
        "satellites": m.num_sats,
        "hdop": m.horizontal_dil,
        "altitude": m.altitude,
        "geoid_separation": m.geo_sep,
        "dgps_age": m.age_gps_data,
        "dgps_station": m.ref_station_id,
    },
    "RMC": lambda m: {
        "time": m.timestamp,
        "status": m.status,
        "lat": _position(m.lat, m.latitude),
        "lon": _position(m.lon, m.longitude),
        "speed_knots": m.spd_over_grnd,
        "course": m.true_course,
        "date": m.datestamp,
        "magnetic_variation": _signed(m.mag_variation, m.mag_var_dir, "W"),
        "mode": getattr(m, "mode_indicator", None),
        "nav_status": getattr(m, "nav_status", None),
    },
    "GLL": lambda m: {
        "lat": _position(m.lat, m.latitude),
        "lon": _position(m.lon, m.longitude),
        "time": m.timestamp,
        "status": m.status,
        "mode": getattr(m, "faa_mode", None),
    },
    "VTG": lambda m: {
        "course": m.true_track,
        "course_magnetic": m.mag_track,
        "speed_knots": m.spd_over_grnd_kts,
        "speed_km_h": m.spd_over_grnd_kmph,
        "mode": getattr(m, "faa_mode", None),
    },
    "GSA": lambda m: {
        "mode": m.mode,
        "fix_type": m.mode_fix_type,
        "prns": _prns(m),
        "satellites_used": len(_prns(m)),
        "pdop": m.pdop,
        "hdop": m.hdop,
        "vdop": m.vdop,
    },
    "ZDA": lambda m: {
        "time": m.timestamp,
        "date": m.datestamp,
        "local_zone_hours": m.local_zone,
        "local_zone_minutes": m.local_zone_minutes,
    },
    "GST": lambda m: {
        "time": m.timestamp,
        "rms": m.rms,
        "std_major": m.std_dev_major,
        "std_minor": m.std_dev_minor,
        "orientation": m.orientation,
        "std_lat": m.std_dev_latitude,
        "std_lon": m.std_dev_longitude,
        "std_alt": m.std_dev_altitude,
    },
    "HDT": lambda m: {"heading": m.heading},
    "TXT": lambda m: {
        "parts": m.num_msg,
        "part": m.msg_num,
        "level": {"00": "error", "01": "warning", "02": "notice", "07": "user"}[m.msg_type],
        "text": m.text,
    },
    "MWV": lambda m: {
        "wind_angle": m.wind_angle,
        "reference": {"R": "relative", "T": "true"}[m.reference],
        "status": m.status,
        # DIFFERENT ("MWV", "wind_speed_*"): the device's own unit is exact
        "wind_speed_" + {"N": "knots", "K": "km_h", "M": "m_s"}[m.wind_speed_units]: m.wind_speed,
    },
    "MDA": lambda m: {
        "pressure_inhg": m.b_pressure_inch,
        "pressure_bar": m.b_pressure_bar,
        "air_temperature": m.air_temp,
        "water_temperature": m.water_temp,
        "humidity": m.rel_humidity,
        "absolute_humidity": m.abs_humidity,
        "dew_point": m.dew_point,
        "wind_direction_true": m.direction_true,
        "wind_direction_magnetic": m.direction_magnetic,
        "wind_speed_knots": m.wind_speed_knots,
        "wind_speed_m_s": m.wind_speed_meters,
    },
}


def _compare(kind, ours, msg, where):
    for field, theirs in EXPECTED[kind](msg).items():
        mine = ours[field]
        if field == "time":
            mine = _seconds(mine)
        if field == "prns":
            mine = [float(prn) for prn in mine]
            assert mine == theirs, (where, field)
            continue
        mine, theirs = _norm(mine), _norm(theirs)
        if isinstance(theirs, float) and mine is not None:
            # positions are rounded to 7 decimals (about 1 cm); all else must match exactly
            assert abs(mine - theirs) <= 5e-8, (where, field, mine, theirs)
        else:
            assert mine == theirs, (where, field, mine, theirs)


def _compare_xdr(ours, msg, where):
    # DIFFERENT ("XDR", "names"): the values, in order, one field per transducer
    values = [value for key, value in ours.items() if key not in ("stream", "talker")]
    theirs = [_norm(msg.get_transducer(i).value) for i in range(msg.num_transducers)]
    assert values == theirs, where


def _satellites(msg):
    found = []
    # DIFFERENT ("GSV", "signal"): a field after the last full block is the signal id
    blocks = (len(msg.data) - 3) // 4
    for i in range(1, blocks + 1):
        prn = getattr(msg, f"sv_prn_num_{i}", "")
        if prn:
            found.append(
                {
                    "prn": int(prn),
                    "elevation": _int(getattr(msg, f"elevation_deg_{i}")),
                    "azimuth": _int(getattr(msg, f"azimuth_{i}")),
                    "snr": _int(getattr(msg, f"snr_{i}")),
                }
            )
    return found


def _int(text):
    return int(text) if text else None


class Comparison:
    """Runs one corpus file through both parsers and records what was compared."""

    def __init__(self, name):
        self.name = name
        self.parse = make_parser("nmea")
        self.groups = {}  # pynmea2's GSV parts, gathered as ours are
        self.compared = []
        self.skipped = []

    def run(self):
        for number, line in _sentences(self.name):
            self.sentence(number, line)
        return self

    def sentence(self, number, line):
        where = (self.name, number, line)
        msg = pynmea2.parse(line, check=True)
        kind = getattr(msg, "sentence_type", None)  # None: proprietary ($PUBX)
        if kind == "GSV":
            self._gather(msg)
        try:
            ours = self.parse(line)
        except Skipped as skip:
            assert skip.held or kind not in SENTENCES, where
            self.skipped.append(skip.kind)
            return
        except ParseError as error:
            reason, why = REJECTED.get((self.name, number), (None, None))
            assert why and error.reason == reason, (where, error.reason)
            self.groups.pop(msg.talker, None)
            return
        assert ours["stream"] == kind.lower() and ours["talker"] == msg.talker, where
        self.check(kind, ours, msg, where)
        self.compared.append(kind)

    def check(self, kind, ours, msg, where):
        if kind == "GSV":
            satellites = self.groups.pop(msg.talker)
            assert ours["satellites"] == satellites, where
            assert ours["satellites_in_view"] == int(msg.num_sv_in_view), where
        elif kind == "XDR":
            _compare_xdr(ours, msg, where)
        else:
            _compare(kind, ours, msg, where)

    def _gather(self, msg):
        if msg.msg_num == "1":
            self.groups[msg.talker] = []
        self.groups.setdefault(msg.talker, []).extend(_satellites(msg))


@pytest.mark.parametrize("name", FILES)
def test_every_sentence_agrees_with_pynmea2(name):
    result = Comparison(name).run()
    assert result.compared, "nothing compared in " + name


def test_the_corpus_covers_every_supported_sentence_type():
    compared = set()
    for name in FILES:
        compared.update(Comparison(name).run().compared)
    assert compared == set(SENTENCES)


def test_the_corpus_has_several_talkers():
    talkers = set()
    for name in FILES:
        for _number, line in _sentences(name):
            talkers.add(line[1:3])
    assert {"GP", "GN", "GL", "GA", "GB", "II", "WI"} <= talkers


def test_every_deliberate_difference_says_why():
    for why in list(DIFFERENT.values()) + [why for _reason, why in REJECTED.values()]:
        assert len(why) > 5
