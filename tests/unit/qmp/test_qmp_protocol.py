"""The QMP protocol core without sockets: framing, negotiation, command objects, id echo, bounds."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pmemd.qmp.errors import ErrorClass, QmpError
from pmemd.qmp.protocol import (
    CLOSED,
    MAX_NESTING,
    NEED_DATA,
    NO_ID,
    Command,
    Connection,
    Negotiated,
    Phase,
    Refused,
)

VERSION = {"qemu": {"major": 8, "minor": 2, "micro": 0}, "package": "test"}


def events(conn: Connection) -> list:
    out = []
    while (event := conn.next_event()) not in (NEED_DATA, CLOSED):
        out.append(event)
    return out


def negotiated() -> Connection:
    conn = Connection(VERSION)
    conn.receive_data(b'{"execute": "qmp_capabilities"}')
    assert isinstance(conn.next_event(), Negotiated)
    return conn


def feed(conn: Connection, data: bytes) -> list:
    conn.receive_data(data)
    return events(conn)


def test_greeting_is_qemus_shape_with_version_and_capabilities():
    greeting = json.loads(Connection(VERSION, capabilities=()).greeting_bytes())
    assert greeting == {"QMP": {"version": VERSION, "capabilities": []}}


def test_commands_before_negotiation_are_command_not_found():
    conn = Connection(VERSION)
    (event,) = feed(conn, b'{"execute": "query-status", "id": 1}')
    assert isinstance(event, Refused)
    assert event.error.error_class is ErrorClass.COMMAND_NOT_FOUND
    assert "qmp_capabilities" in event.error.desc
    assert event.id == 1
    assert conn.phase is Phase.NEGOTIATING


def test_qmp_capabilities_enters_command_mode_once():
    conn = Connection(VERSION)
    (event,) = feed(conn, b'{"execute": "qmp_capabilities", "id": "a"}')
    assert event == Negotiated("a", ())
    assert conn.phase is Phase.COMMAND
    (again,) = feed(conn, b'{"execute": "qmp_capabilities"}')
    assert isinstance(again, Refused) and again.error.error_class is ErrorClass.COMMAND_NOT_FOUND


def test_enabling_a_capability_not_offered_is_refused():
    conn = Connection(VERSION)
    (event,) = feed(conn, b'{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}')
    assert isinstance(event, Refused) and "oob" in event.error.desc
    assert conn.phase is Phase.NEGOTIATING


def test_a_command_carries_name_arguments_and_any_json_id():
    conn = negotiated()
    (event,) = feed(conn, b'{"execute": "stop", "arguments": {"a": [1]}, "id": {"x": [null]}}')
    assert event == Command("stop", {"a": [1]}, {"x": [None]})
    (no_id,) = feed(conn, b'{"execute": "cont"}')
    assert no_id.id is NO_ID


def test_replies_echo_the_id_and_omit_it_when_absent():
    conn = negotiated()
    assert json.loads(conn.reply_bytes({}, [1, "two"])) == {"return": {}, "id": [1, "two"]}
    assert json.loads(conn.reply_bytes(5)) == {"return": 5}
    assert json.loads(conn.error_bytes(QmpError("no"), None)) == {"error": {"class": "GenericError", "desc": "no"}, "id": None}


@pytest.mark.parametrize(
    "text, desc",
    [
        (b"[1, 2]", "QMP input must be a JSON object"),
        (b"42\n", "QMP input must be a JSON object"),
        (b'{"arguments": {}}', "QMP input lacks member 'execute'"),
        (b'{"execute": 5}', "QMP input member 'execute' must be a string"),
        (b'{"execute": "stop", "arguments": []}', "QMP input member 'arguments' must be an object"),
        (b'{"execute": "stop", "extra": 1}', "QMP input member 'extra' is unexpected"),
        (b'{"exec-oob": "stop"}', "QMP input member 'exec-oob' is unexpected"),
    ],
)
def test_malformed_command_objects_are_generic_errors(text, desc):
    (event,) = feed(negotiated(), text)
    assert isinstance(event, Refused)
    assert event.error.error_class is ErrorClass.GENERIC_ERROR
    assert event.error.desc.startswith(desc)


def test_an_invalid_command_object_still_echoes_its_id():
    (event,) = feed(negotiated(), b'{"execute": "stop", "bogus": 1, "id": 77}')
    assert isinstance(event, Refused) and event.id == 77


def test_values_split_across_reads_and_packed_in_one_read_are_framed():
    conn = negotiated()
    assert feed(conn, b'{"execute": "st') == []
    assert feed(conn, b'op"}{"execute": "cont"}  \r\n{"execute"') == [Command("stop", {}), Command("cont", {})]
    assert feed(conn, b': "quit"}') == [Command("quit", {})]


def test_braces_and_escapes_inside_strings_do_not_confuse_framing():
    conn = negotiated()
    (event,) = feed(conn, b'{"execute": "x", "arguments": {"s": "}{\\"]["}}')
    assert event == Command("x", {"s": '}{"]['})


def test_garbage_gets_one_error_per_line_and_the_next_command_is_served():
    conn = negotiated()
    got = feed(conn, b'hello\n\x00\xff\xfe\n{"execute": "stop"}')
    assert [type(e) for e in got] == [Refused, Refused, Command]
    assert got[0].error.desc.startswith("JSON parse error")


def test_half_an_object_cut_by_a_raw_newline_in_a_string_is_refused_and_framing_resyncs():
    conn = negotiated()
    got = feed(conn, b'{"execute": "query-sta\n{"execute": "cont"}')
    assert [type(e) for e in got] == [Refused, Command]


def test_an_unbalanced_value_is_a_parse_error():
    (event,) = feed(negotiated(), b'{"execute": "stop"]')
    assert isinstance(event, Refused) and event.error.desc.startswith("JSON parse error")


def test_nan_and_invalid_utf8_are_refused():
    conn = negotiated()
    got = feed(conn, b'{"execute": "x", "arguments": {"n": NaN}}{"execute": "\xff"}')
    assert [type(e) for e in got] == [Refused, Refused]


def test_a_value_longer_than_the_bound_is_refused_once_and_skipped_without_buffering():
    conn = Connection(VERSION, max_message=1024)
    conn.receive_data(b'{"execute": "qmp_capabilities"}')
    conn.next_event()
    chunk = b'{"execute": "x", "arguments": {"s": "' + b"a" * 4096
    (event,) = feed(conn, chunk)
    assert isinstance(event, Refused) and "longer than 1024" in event.error.desc
    assert feed(conn, b"b" * (1 << 20)) == []  # still inside the refused value: no more errors
    assert len(conn._splitter.buf) == 0
    assert feed(conn, b'"}}{"execute": "stop"}') == [Command("stop", {})]


def test_a_garbage_line_longer_than_the_bound_is_refused_once():
    conn = Connection(VERSION, max_message=1024)
    got = feed(conn, b"z" * (1 << 20) + b"\n")
    assert len(got) == 1 and "longer than 1024" in got[0].error.desc


def test_nesting_deeper_than_the_bound_is_refused_and_skipped():
    conn = negotiated()
    deep = b'{"execute": "x", "arguments": {"a": ' + b"[" * (MAX_NESTING + 5) + b"]" * (MAX_NESTING + 5) + b"}}"
    got = feed(conn, deep + b'{"execute": "stop"}')
    assert [type(e) for e in got] == [Refused, Command]
    assert "nesting" in got[0].error.desc


def test_end_of_file_reports_closed_after_complete_values():
    conn = negotiated()
    conn.receive_data(b'{"execute": "stop"}{"execute": "co')
    conn.receive_data(b"")
    assert conn.next_event() == Command("stop", {})
    assert conn.next_event() is CLOSED


def test_events_are_framed_only_after_negotiation():
    conn = Connection(VERSION)
    assert conn.event_bytes("STOP", None, 1, 2) == b""
    conn.receive_data(b'{"execute": "qmp_capabilities"}')
    conn.next_event()
    frame = conn.event_bytes("STOP", None, 1, 2)
    assert frame.endswith(b"\r\n")
    assert json.loads(frame) == {"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=12))
def test_any_bytes_only_ever_yield_protocol_events(chunks):
    conn = Connection(VERSION, max_message=256)
    for chunk in chunks:
        conn.receive_data(chunk)
        for event in events(conn):
            assert isinstance(event, (Command, Refused, Negotiated))
    assert len(conn._splitter.buf) <= 256 + 64
