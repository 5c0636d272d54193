"""Port discovery: matching ports by USB vid/pid/serial number, and the port listing's shape."""

from __future__ import annotations

import logging

import pytest
from serial.tools.list_ports_common import ListPortInfo

from gateway.sources import ports

PICO_A = {
    "device": "/dev/ttyACM1",
    "description": "Board in FS mode",
    "vid": "2e8a",
    "pid": "0005",
    "serial_number": "E6614C311B7A1234",
    "manufacturer": "MicroPython",
    "by_id": None,  # no udev link to it on this machine
}
PICO_B = {**PICO_A, "device": "/dev/ttyACM0", "serial_number": "E66164084373AB12"}
FTDI = {
    "device": "/dev/ttyUSB0",
    "description": "FT232R USB UART",
    "vid": "0403",
    "pid": "6001",
    "serial_number": "A50285BI",
    "manufacturer": "FTDI",
}
ONBOARD_UART = {
    "device": "/dev/ttyAMA0",
    "description": "ttyAMA0",
    "vid": None,
    "pid": None,
    "serial_number": None,
    "manufacturer": None,
}
ALL = [PICO_A, PICO_B, FTDI, ONBOARD_UART]


def test_vid_and_pid_select_the_one_matching_port():
    assert ports.find({"vid": "0403", "pid": "6001"}, ALL) == "/dev/ttyUSB0"


@pytest.mark.parametrize("vid", ["0403", "403", "0x0403", "0X0403", 0x0403])
def test_ids_compare_as_hex_whatever_their_spelling(vid):
    assert ports.find({"vid": vid}, ALL) == "/dev/ttyUSB0"


def test_upper_case_ids_in_the_listing_still_match():
    shouting = {**FTDI, "vid": "0403", "pid": "6A01"}
    assert ports.find({"vid": "0403", "pid": "6a01"}, [shouting]) == "/dev/ttyUSB0"


def test_serial_number_picks_one_of_two_identical_boards_ignoring_case():
    match = {"vid": "2E8A", "pid": "0005", "serial": "e6614c311b7a1234"}
    assert ports.find(match, ALL) == "/dev/ttyACM1"


def test_serial_number_alone_is_enough():
    assert ports.find({"serial": "A50285BI"}, ALL) == "/dev/ttyUSB0"


def test_every_given_key_must_match():
    assert ports.find({"vid": "2e8a", "pid": "6001"}, ALL) is None
    assert ports.find({"vid": "0403", "serial": "E6614C311B7A1234"}, ALL) is None


def test_no_match_is_none():
    assert ports.find({"vid": "1234"}, ALL) is None
    assert ports.find({"vid": "2e8a"}, []) is None


def test_ports_without_usb_ids_never_match():
    assert ports.find({"vid": "0000"}, [ONBOARD_UART]) is None
    assert ports.find({"serial": "None"}, [ONBOARD_UART]) is None


def test_several_matches_take_the_first_device_and_warn(caplog):
    with caplog.at_level(logging.WARNING, logger="gateway.sources"):
        found = ports.find({"vid": "2e8a", "pid": "0005"}, ALL)
    assert found == "/dev/ttyACM0"  # sorted by device, not listing order
    assert "2 ports match vid=2e8a pid=0005" in caplog.text
    assert "/dev/ttyACM0, /dev/ttyACM1" in caplog.text


def test_a_unique_match_does_not_warn(caplog):
    with caplog.at_level(logging.WARNING, logger="gateway.sources"):
        ports.find({"serial": "A50285BI"}, ALL)
    assert caplog.text == ""


def test_empty_match_is_an_error():
    with pytest.raises(ValueError, match="at least one of vid, pid, serial"):
        ports.find({}, ALL)
    with pytest.raises(ValueError, match="at least one of vid, pid, serial"):
        ports.find({"vid": None, "serial": ""}, ALL)


def test_malformed_id_is_a_clear_error():
    with pytest.raises(ValueError, match="expected a USB id in hex such as 2e8a, got 'pico'"):
        ports.find({"vid": "pico"}, ALL)


def test_describe_match_for_log_lines():
    assert ports.describe_match({"vid": "2e8a", "serial": "E661"}) == "vid=2e8a serial=E661"


def test_port_info_turns_pyserial_port_info_into_a_plain_dict():
    info = ListPortInfo("/dev/ttyACM3", skip_link_detection=True)
    info.vid, info.pid = 0x2E8A, 0x5
    info.serial_number, info.manufacturer = "E6614C311B7A1234", "MicroPython"
    info.description = "Board in FS mode"
    assert ports.port_info(info) == {**PICO_A, "device": "/dev/ttyACM3"}


def test_list_ports_lists_this_machines_ports_as_dicts():
    listed = ports.list_ports()
    assert isinstance(listed, list)
    assert [port["device"] for port in listed] == sorted(port["device"] for port in listed)
    for port in listed:
        assert set(port) == set(PICO_A)
        for key in ("vid", "pid"):
            assert port[key] is None or (len(port[key]) == 4 and port[key] == port[key].lower())


def test_by_id_path_finds_the_udev_link_to_a_device(tmp_path, monkeypatch):
    # udev's directory, made here: a link named after the device's serial number.
    by_id = tmp_path / "by-id"
    by_id.mkdir()
    monkeypatch.setattr(ports, "BY_ID_DIRECTORY", str(by_id))
    target = tmp_path / "ttyACM7"
    target.write_text("")
    link = by_id / "usb-MicroPython_Board_E661-if00"
    link.symlink_to(target)
    assert ports.by_id_path(str(target)) == str(link)
    assert ports.by_id_path(str(tmp_path / "ttyACM8")) is None
    monkeypatch.setattr(ports, "BY_ID_DIRECTORY", str(tmp_path / "absent"))
    assert ports.by_id_path(str(target)) is None
