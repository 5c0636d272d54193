"""NMEA sentences a GPS or weather station sends: fields, GSV groups, XDR, choice and errors."""

from gateway.core.nmea import SENTENCES
from gateway.core.parsers import ParseError, Skipped, make_parser


def _nmea(body):
    """A sentence with a correct checksum (XOR of everything between $ and *)."""
    checksum = 0
    for char in body:
        checksum ^= ord(char)
    return f"${body}*{checksum:02X}"


def _reason(parse, line):
    try:
        result = parse(line)
    except Skipped as skip:
        raise AssertionError(f"expected a ParseError for {line!r}, got Skipped: {skip}") from None
    except ParseError as error:
        return error.reason
    raise AssertionError(f"expected ParseError for {line!r}, got {result!r}")


def _skipped(parse, line):
    try:
        result = parse(line)
    except Skipped as skip:
        return skip
    raise AssertionError(f"expected Skipped for {line!r}, got {result!r}")


# One sentence of each type as real devices print it, and the reading it must give.
READINGS = [
    (
        "$GNGLL,4038.05311,N,00839.60587,W,181918.00,A,A*6A",
        {
            "stream": "gll",
            "talker": "GN",
            "lat": 40.6342185,
            "lon": -8.6600978,
            "time": "18:19:18.00",
            "status": "A",
            "mode": "A",
        },
    ),
    (
        "$GNVTG,,T,,M,0.268,N,0.495,K,A*39",
        {
            "stream": "vtg",
            "talker": "GN",
            "course": None,
            "course_magnetic": None,
            "speed_knots": 0.268,
            "speed_km_h": 0.495,
            "mode": "A",
        },
    ),
    (
        "$GNGSA,A,3,66,76,,,,,,,,,,,9.62,5.88,7.62,2*08",
        {
            "stream": "gsa",
            "talker": "GN",
            "mode": "A",
            "fix_type": 3,
            "satellites_used": 2,
            "prns": [66, 76],
            "pdop": 9.62,
            "hdop": 5.88,
            "vdop": 7.62,
            "system": "GLONASS",
        },
    ),
    (
        "$GNRMC,103607.00,A,5327.03942,N,10214.42462,W,0.046,,060321,,,A,V*0E",
        {
            "stream": "rmc",
            "talker": "GN",
            "time": "10:36:07.00",
            "status": "A",
            "lat": 53.450657,
            "lon": -102.2404103,
            "speed_knots": 0.046,
            "speed_km_h": 0.085,
            "course": None,
            "date": "2021-03-06",
            "magnetic_variation": None,
            "mode": "A",
            "nav_status": "V",
        },
    ),
    (
        "$GNZDA,103607.00,06,03,2021,00,00*7F",
        {
            "stream": "zda",
            "talker": "GN",
            "time": "10:36:07.00",
            "date": "2021-03-06",
            "local_zone_hours": 0,
            "local_zone_minutes": 0,
        },
    ),
    (
        "$GPGST,172814.0,0.006,0.023,0.020,273.6,0.023,0.020,0.031*6A",
        {
            "stream": "gst",
            "talker": "GP",
            "time": "17:28:14.0",
            "rms": 0.006,
            "std_major": 0.023,
            "std_minor": 0.02,
            "orientation": 273.6,
            "std_lat": 0.023,
            "std_lon": 0.02,
            "std_alt": 0.031,
        },
    ),
    ("$HEHDT,343.0,T*2B", {"stream": "hdt", "talker": "HE", "heading": 343.0}),
    (
        "$GNTXT,01,01,02,ROM BASE 2.01 (75331) Oct 29 2013 13:28:17*44",
        {
            "stream": "txt",
            "talker": "GN",
            "parts": 1,
            "part": 1,
            "level": "notice",
            "text": "ROM BASE 2.01 (75331) Oct 29 2013 13:28:17",
        },
    ),
    (
        "$IIMWV,271.0,R,000.2,N,A*3B",
        {
            "stream": "mwv",
            "talker": "II",
            "wind_angle": 271.0,
            "reference": "relative",
            "status": "A",
            "wind_speed_knots": 0.2,
            "wind_speed_km_h": 0.37,
            "wind_speed_m_s": 0.103,
        },
    ),
    (
        "$WIMDA,29.796,I,1.009,B,31.7,C,,,,,,,82.3,T,72.3,M,7.4,N,3.8,M*23",
        {
            "stream": "mda",
            "talker": "WI",
            "pressure_inhg": 29.796,
            "pressure_bar": 1.009,
            "air_temperature": 31.7,
            "water_temperature": None,
            "humidity": None,
            "absolute_humidity": None,
            "dew_point": None,
            "wind_direction_true": 82.3,
            "wind_direction_magnetic": 72.3,
            "wind_speed_knots": 7.4,
            "wind_speed_km_h": 13.68,
            "wind_speed_m_s": 3.8,
        },
    ),
]


def test_each_sentence_type_gives_its_named_fields():
    for line, expected in READINGS:
        got = make_parser("nmea")(line)
        assert got == expected, line + ": " + repr(got)


# -- GSV: satellites in view, one reading per group -------------------------------------------

GPS_GROUP = [
    "$GPGSV,3,1,11,02,36,309,31,03,16,092,18,05,04,285,,06,76,255,42*7F",
    "$GPGSV,3,2,11,07,38,144,29,09,71,044,39,17,09,203,24,19,22,220,22*7B",
    "$GPGSV,3,3,11,23,40,051,28,30,16,173,18,33,43,190,*45",
]


def test_gsv_group_becomes_one_reading_with_every_satellite():
    parse = make_parser("nmea")
    for number, line in enumerate(GPS_GROUP[:2], 1):
        skip = _skipped(parse, line)
        assert (skip.kind, skip.held) == ("GSV", True)
        assert skip.reason == f"GSV part {number} of 3 held for its group"
    data = parse(GPS_GROUP[2])
    satellites = data.pop("satellites")
    assert data == {
        "stream": "gsv",
        "talker": "GP",
        "satellites_in_view": 11,
        "satellites_tracked": 9,
        "snr_max": 42,
        "snr_mean": 27.9,
        "system": "GPS",
        "signal": None,
    }
    assert [sat["prn"] for sat in satellites] == [2, 3, 5, 6, 7, 9, 17, 19, 23, 30, 33]
    assert satellites[2] == {"prn": 5, "elevation": 4, "azimuth": 285, "snr": None}
    assert satellites[-1] == {"prn": 33, "elevation": 43, "azimuth": 190, "snr": None}


def test_gsv_groups_of_several_constellations_and_signals_stay_apart():
    # NMEA 4.1: GPS L1 (signal 1) and L5 (signal 6) groups, and a GLONASS group in between
    parse = make_parser("nmea")
    lines = [
        _nmea("GPGSV,2,1,05,01,06,014,08,12,43,207,28,14,06,049,,15,44,171,23,1"),
        _nmea("GLGSV,1,1,02,65,07,176,,66,57,223,35,1"),
        _nmea("GPGSV,2,2,05,17,32,064,16,1"),
        _nmea("GPGSV,1,1,02,12,43,207,30,15,44,171,25,6"),
    ]
    readings = []
    for line in lines:
        try:
            readings.append(parse(line))
        except Skipped as skip:
            assert skip.held
    summary = [
        (r["talker"], r["system"], r["signal"], r["satellites_in_view"], len(r["satellites"]))
        for r in readings
    ]
    assert summary == [
        ("GL", "GLONASS", "1", 2, 2),
        ("GP", "GPS", "1", 5, 5),
        ("GP", "GPS", "6", 2, 2),
    ]


def test_gsv_empty_group_and_satellites_without_position():
    parse = make_parser("nmea")
    empty = parse("$GAGSV,1,1,00,7*73")
    assert (empty["satellites_in_view"], empty["satellites"], empty["snr_max"]) == (0, [], None)
    beidou = parse("$GBGSV,1,1,02,21,,,15,25,,,28,1*7E")
    assert beidou["satellites"][0] == {"prn": 21, "elevation": None, "azimuth": None, "snr": 15}
    assert (beidou["system"], beidou["snr_mean"]) == ("BeiDou", 21.5)


def test_gsv_missing_or_mixed_parts_are_errors_and_the_next_group_still_works():
    parse = make_parser("nmea")
    # the capture starts mid-group
    assert _reason(parse, GPS_GROUP[2]) == "GSV part 3 of 3 without the parts before it"
    # part 2 lost (say, to a bad checksum)
    _skipped(parse, GPS_GROUP[0])
    assert _reason(parse, GPS_GROUP[2]) == "GSV part 3 of 3 without the parts before it"
    # parts of groups of different sizes
    _skipped(parse, GPS_GROUP[0])
    other = _nmea("GPGSV,4,2,11,07,38,144,29,09,71,044,39,17,09,203,24,19,22,220,22")
    assert _reason(parse, other) == "GSV part 2 of 4 without the parts before it"
    _skipped(parse, GPS_GROUP[0])
    view = _nmea("GPGSV,3,2,12,07,38,144,29,09,71,044,39,17,09,203,24,19,22,220,22")
    assert _reason(parse, view) == "GSV parts disagree on satellites in view (11, 12)"
    for line in GPS_GROUP[:2]:
        _skipped(parse, line)
    assert parse(GPS_GROUP[2])["satellites_in_view"] == 11


def test_gsv_a_new_part_one_restarts_its_group():
    parse = make_parser("nmea")
    _skipped(parse, GPS_GROUP[0])
    for line in GPS_GROUP[:2]:
        _skipped(parse, line)
    assert len(parse(GPS_GROUP[2])["satellites"]) == 11  # not 15: the first part 1 is gone


def test_gsv_groups_in_progress_are_bounded():
    parse = make_parser("nmea")
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    for first in letters:
        for second in letters:
            _skipped(parse, _nmea(f"{first}{second}GSV,2,1,05,01,06,014,08"))
    for line in GPS_GROUP:
        try:
            data = parse(line)
        except Skipped:
            continue
    assert data["satellites_in_view"] == 11


def test_gsv_bad_numbering_and_fields():
    parse = make_parser("nmea")
    cases = [
        ("GPGSV,3,4,11,02,36,309,31", "bad GSV sentence numbering '4' of '3'"),
        ("GPGSV,0,0,11", "bad GSV sentence numbering '0' of '0'"),
        ("GPGSV,x,1,11", "bad NMEA GSV sentence count 'x'"),
        ("GPGSV,1,1,03,02,36,309,31,03,16", "GSV satellite fields come in fours, got 6"),
        ("GPGSV,1,1,01,02,high,309,31", "bad NMEA elevation 'high'"),
        ("GPGSV,1,1", "GSV sentence has 3 fields, expected at least 4"),
    ]
    for body, reason in cases:
        assert _reason(parse, _nmea(body)) == reason, body


# -- XDR: transducers -------------------------------------------------------------------------


def test_xdr_one_field_per_transducer_named_by_type_id_and_unit():
    parse = make_parser("nmea")
    data = parse("$WIXDR,P,1008.8,B,3,C,31.9,C,0,H,67.3,P,2,C,99.9,C,1*5B")
    assert data == {
        "stream": "xdr",
        "talker": "WI",
        "pressure_3_bar": 1008.8,
        "temperature_0_c": 31.9,
        "humidity_2_percent": 67.3,
        "temperature_1_c": 99.9,
    }
    weather = parse(
        _nmea("WIXDR,C,21.5,C,AirTemp,P,1.0132,B,Baro,H,40.2,P,RH,U,12.1,V,Supply,S,1,,Door")
    )
    assert weather == {
        "stream": "xdr",
        "talker": "WI",
        "temperature_airtemp_c": 21.5,
        "pressure_baro_bar": 1.0132,
        "humidity_rh_percent": 40.2,
        "voltage_supply_v": 12.1,
        "switch_door": 1.0,
    }


def test_xdr_without_ids_trailing_empty_fields_and_repeated_names():
    parse = make_parser("nmea")
    assert parse("$WIXDR,C,007,C,,U,4.1,V,,*63") == {
        "stream": "xdr",
        "talker": "WI",
        "temperature_c": 7.0,
        "voltage_v": 4.1,
    }
    data = parse(_nmea("IIXDR,C,20.1,C,,C,19.8,C,,C,,C,"))
    assert (data["temperature_c"], data["temperature_c_2"], data["temperature_c_3"]) == (
        20.1,
        19.8,
        None,
    )
    assert (
        parse(_nmea("YXXDR,A,-64.437,M,N,A,054.454,D,E,C,17.09,C,T-N1052"))["temperature_t_n1052_c"]
        == 17.09
    )


def test_xdr_malformed():
    parse = make_parser("nmea")
    cases = [
        ("WIXDR,C,21.5,C,Air,P,1.01", "XDR fields come in fours (type, value, unit, id), got 6"),
        ("WIXDR", "XDR sentence has no transducer"),
        ("WIXDR,temp,21.5,C,Air", "bad XDR transducer type 'temp'"),
        ("WIXDR,C,warm,C,Air", "bad NMEA XDR value 'warm'"),
        ("WIXDR,C,nan,C,Air", "bad NMEA XDR value 'nan'"),
    ]
    for body, reason in cases:
        assert _reason(parse, _nmea(body)) == reason, body


# -- wind -------------------------------------------------------------------------------------


def test_mwv_speed_in_every_unit_the_device_may_use():
    parse = make_parser("nmea")
    cases = [
        ("WIMWV,128.0,T,10.0,N,A", {"knots": 10.0, "km_h": 18.52, "m_s": 5.144}),
        ("WIMWV,128.0,T,36.0,K,A", {"knots": 19.438, "km_h": 36.0, "m_s": 10.0}),
        ("WIMWV,128.0,T,5.0,M,A", {"knots": 9.719, "km_h": 18.0, "m_s": 5.0}),
        ("WIMWV,128.0,T,10.0,S,A", {"knots": 8.69, "km_h": 16.093, "m_s": 4.47}),
        ("WIMWV,,R,,,V", {"knots": None, "km_h": None, "m_s": None}),
    ]
    for body, speeds in cases:
        data = parse(_nmea(body))
        got = {unit: data["wind_speed_" + unit] for unit in speeds}
        assert got == speeds, body + ": " + repr(got)
    assert parse(_nmea("WIMWV,128.0,T,5.0,M,A"))["reference"] == "true"
    assert _reason(parse, _nmea("WIMWV,128.0,R,5.0,,A")) == "MWV wind speed without a unit"
    bad = _reason(parse, _nmea("WIMWV,128.0,X,5.0,M,A"))
    assert bad == "bad NMEA MWV reference 'X', expected one of R, T"


# -- which sentences, and what is not a reading -----------------------------------------------


def test_sentences_picks_what_to_emit_and_the_rest_is_skipped_by_type():
    parse = make_parser("nmea", sentences=["GGA", "rmc"])
    assert parse(_nmea("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"))
    skip = _skipped(parse, "$GNVTG,,T,,M,0.268,N,0.495,K,A*39")
    assert (skip.kind, skip.reason) == ("VTG", "NMEA sentence VTG is not in sentences, skipped")
    skip = _skipped(parse, GPS_GROUP[0])
    assert (skip.kind, skip.held) == ("GSV", False)  # not picked: no group is kept either
    assert _skipped(parse, _nmea("GPRTE,2,1,c,0,A")).kind == "RTE"
    # a sentence not picked is still checked first: a bad checksum stays a parse error
    assert _reason(parse, GPS_GROUP[0][:-2] + "00").startswith("NMEA checksum mismatch")


def test_sentences_must_be_known_types():
    for sentences, message in (
        (["GGA", "GBS"], "unknown NMEA sentence 'GBS', expected some of GGA, RMC"),
        ([], "sentences must name at least one NMEA sentence"),
    ):
        try:
            make_parser("nmea", sentences=sentences)
        except ValueError as error:
            assert str(error).startswith(message), str(error)
            continue
        raise AssertionError(f"expected ValueError for {sentences!r}")
    assert len(SENTENCES) == 13


def test_nmea_41_mode_and_navigational_status_are_kept():
    parse = make_parser("nmea")
    data = parse(_nmea("GNRMC,103607.00,A,5327.03942,N,00214.42462,W,0.046,,060321,2.5,E,D,S"))
    assert (data["mode"], data["nav_status"], data["magnetic_variation"]) == ("D", "S", 2.5)
    assert _reason(parse, _nmea("GNRMC,103607.00,A,,,,,,,060321,,,d")).startswith(
        "bad NMEA mode indicator"
    )
    bad = _reason(parse, _nmea("GNRMC,103607.00,A,,,,,,,060321,,,A,X"))
    assert bad == "bad NMEA navigational status 'X', expected one of S, C, U, V"


def test_malformed_fields_say_which():
    parse = make_parser("nmea")
    cases = [
        ("GPGGA,253519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,,M,,", "bad NMEA time '253519'"),
        (
            "GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,F,,M,,",
            "bad NMEA altitude unit 'F', expected M",
        ),
        ("GPRMC,123519,A,,,,,,,320394,,", "bad NMEA date '320394'"),
        ("GPVTG,054.7,X,,M,5.5,N,10.2,K", "bad NMEA VTG field 2 unit 'X', expected T"),
        (
            "GPGSA,A,3,02,,,07,,09,24,26,,,,,1.6,1.6",
            "GSA sentence has 17 fields, expected at least 18",
        ),
        (
            "GPGSA,Z,3,,,,,,,,,,,,,1.6,1.6,1.0",
            "bad NMEA GSA selection mode 'Z', expected one of A, M",
        ),
        ("GPZDA,010203.05,06,13,2008,,", "bad NMEA date '06,13,2008'"),
        ("GPZDA,010203.05,06,07,08,,", "bad NMEA date '06,07,08'"),
        ("GPHDT,343.0,M", "bad NMEA heading unit 'M', expected T"),
        ("GPTXT,01,01,02", "TXT sentence has 4 fields, expected at least 5"),
        ("WIMDA,29.796,I,1.009,X,31.7,C", "bad NMEA MDA field 4 unit 'X', expected B"),
        ("gpGGA,123519", "bad NMEA address 'gpGGA', expected a talker and a type like GPGGA"),
        (",123519", "bad NMEA address '', expected a talker and a type like GPGGA"),
    ]
    for body, reason in cases:
        assert _reason(parse, _nmea(body)) == reason, body


def test_random_fields_with_good_checksums_give_clear_reasons():
    # every sentence type, fields drawn from what NMEA uses: bad input must be named as such,
    # never end up as an internal error ("unparseable line (IndexError...)")
    alphabet = "0123456789.,-+ACEGKMNPRSTVW,,,,,"
    parse = make_parser("nmea")
    state = 12345
    for count in range(3000):
        kind = SENTENCES[count % len(SENTENCES)]
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF
        chars = []
        for _ in range(state % 70):
            state = (state * 1103515245 + 12345) & 0x7FFFFFFF
            chars.append(alphabet[(state >> 8) % len(alphabet)])
        line = _nmea("GP" + kind + "," + "".join(chars))
        try:
            result = parse(line)
        except Skipped:
            continue
        except ParseError as error:
            assert not error.reason.startswith("unparseable"), line + ": " + error.reason
            continue
        assert result["stream"] == kind.lower()
