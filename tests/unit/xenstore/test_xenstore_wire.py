"""The sans-I/O xenstore core against xs_wire.h: bytes in, messages out, and back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pmemd.xenstore.errors import LocalProtocolError, RemoteProtocolError
from pmemd.xenstore.wire import (
    HEADER,
    HEADER_SIZE,
    NEED_DATA,
    XENSTORE_PAYLOAD_MAX,
    Access,
    Message,
    MessageReader,
    MsgType,
    Perm,
    decode_error,
    decode_perms,
    decode_strings,
    decode_write,
    encode_error,
    encode_perms,
    encode_strings,
    encode_write,
)


def read_all(data: bytes) -> list[Message]:
    reader = MessageReader()
    reader.receive_data(data)
    out = []
    while (message := reader.next_message()) is not NEED_DATA:
        out.append(message)
    return out


# enum xsd_sockmsg_type as printed in xen/include/public/io/xs_wire.h (XS_RESTRICT, 20, removed).
XS_WIRE_H_NUMBERS = {
    "CONTROL": 0, "DIRECTORY": 1, "READ": 2, "GET_PERMS": 3, "WATCH": 4, "UNWATCH": 5,
    "TRANSACTION_START": 6, "TRANSACTION_END": 7, "INTRODUCE": 8, "RELEASE": 9,
    "GET_DOMAIN_PATH": 10, "WRITE": 11, "MKDIR": 12, "RM": 13, "SET_PERMS": 14,
    "WATCH_EVENT": 15, "ERROR": 16, "IS_DOMAIN_INTRODUCED": 17, "RESUME": 18, "SET_TARGET": 19,
    "RESET_WATCHES": 21, "DIRECTORY_PART": 22, "INVALID": 0xFFFF,
}


def test_message_type_numbers_match_xs_wire_h() -> None:
    assert {t.name: t.value for t in MsgType} == XS_WIRE_H_NUMBERS


def test_header_is_four_little_endian_u32() -> None:
    assert HEADER_SIZE == 16
    assert HEADER.build({"type": 1, "req_id": 2, "tx_id": 3, "len": 4}) == bytes.fromhex(
        "01000000" "02000000" "03000000" "04000000")


# One hand-built frame per message type: header (type, req_id, tx_id, len) then payload.
FRAMES = [
    (MsgType.CONTROL, b"\x00\x00\x00\x00\x07\x00\x00\x00\x00\x00\x00\x00\x06\x00\x00\x00check\x00"),
    (MsgType.DIRECTORY, b"\x01\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x07\x00\x00\x00/local\x00"),
    (MsgType.READ, b"\x02\x00\x00\x00\x02\x00\x00\x00\x05\x00\x00\x00\x03\x00\x00\x00/a\x00"),
    (MsgType.GET_PERMS, b"\x03\x00\x00\x00\x03\x00\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00/a\x00"),
    (MsgType.WATCH, b"\x04\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00\x05\x00\x00\x00/a\x00t\x00"),
    (MsgType.UNWATCH, b"\x05\x00\x00\x00\x05\x00\x00\x00\x00\x00\x00\x00\x05\x00\x00\x00/a\x00t\x00"),
    (MsgType.TRANSACTION_START, b"\x06\x00\x00\x00\x06\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00"),
    (MsgType.TRANSACTION_END, b"\x07\x00\x00\x00\x07\x00\x00\x00\x09\x00\x00\x00\x02\x00\x00\x00T\x00"),
    (MsgType.INTRODUCE, b"\x08\x00\x00\x00\x08\x00\x00\x00\x00\x00\x00\x00\x08\x00\x00\x005\x00123\x001\x00"),
    (MsgType.RELEASE, b"\x09\x00\x00\x00\x09\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x005\x00"),
    (MsgType.GET_DOMAIN_PATH, b"\x0a\x00\x00\x00\x0a\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x005\x00"),
    (MsgType.WRITE, b"\x0b\x00\x00\x00\x0b\x00\x00\x00\x00\x00\x00\x00\x05\x00\x00\x00/a\x00hi"),
    (MsgType.MKDIR, b"\x0c\x00\x00\x00\x0c\x00\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00/a\x00"),
    (MsgType.RM, b"\x0d\x00\x00\x00\x0d\x00\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00/a\x00"),
    (MsgType.SET_PERMS, b"\x0e\x00\x00\x00\x0e\x00\x00\x00\x00\x00\x00\x00\x09\x00\x00\x00/a\x00n0\x00r5\x00"),
    (MsgType.WATCH_EVENT, b"\x0f\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x05\x00\x00\x00/a\x00t\x00"),
    (MsgType.ERROR, b"\x10\x00\x00\x00\x10\x00\x00\x00\x00\x00\x00\x00\x07\x00\x00\x00ENOENT\x00"),
    (MsgType.IS_DOMAIN_INTRODUCED, b"\x11\x00\x00\x00\x11\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x005\x00"),
    (MsgType.RESUME, b"\x12\x00\x00\x00\x12\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x005\x00"),
    (MsgType.SET_TARGET, b"\x13\x00\x00\x00\x13\x00\x00\x00\x00\x00\x00\x00\x04\x00\x00\x006\x005\x00"),
    (MsgType.RESET_WATCHES, b"\x15\x00\x00\x00\x15\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"),
    (MsgType.DIRECTORY_PART, b"\x16\x00\x00\x00\x16\x00\x00\x00\x00\x00\x00\x00\x05\x00\x00\x00/a\x000\x00"),
]


def _frame_message(kind: MsgType, frame: bytes) -> Message:
    _, req_id, tx_id, length = (int.from_bytes(frame[i:i + 4], "little") for i in range(0, 16, 4))
    assert length == len(frame) - HEADER_SIZE
    return Message(kind, req_id, tx_id, frame[HEADER_SIZE:])


@pytest.mark.parametrize(("kind", "frame"), FRAMES, ids=[k.name for k, _ in FRAMES])
def test_frame_of_each_type_parses_to_its_message(kind: MsgType, frame: bytes) -> None:
    (message,) = read_all(frame)
    assert message == _frame_message(kind, frame)
    assert message.type is kind


@pytest.mark.parametrize(("kind", "frame"), FRAMES, ids=[k.name for k, _ in FRAMES])
def test_message_of_each_type_encodes_to_its_frame(kind: MsgType, frame: bytes) -> None:
    assert _frame_message(kind, frame).encode() == frame


def test_payload_builders_produce_the_documented_shapes() -> None:
    assert encode_strings("/a", "tok") == b"/a\0tok\0"
    assert encode_write("/a", b"hi") == b"/a\0hi"
    assert encode_error("EACCES") == b"EACCES\0"
    assert encode_perms([Perm(0, Access.NONE), Perm(5, Access.READ)]) == b"n0\0r5\0"


def test_write_payload_value_may_contain_nul() -> None:
    assert decode_write(b"/a\0x\0y") == ("/a", b"x\0y")


def test_write_payload_without_nul_is_rejected() -> None:
    with pytest.raises(RemoteProtocolError):
        decode_write(b"/a")


def test_error_payload_names_the_errno() -> None:
    assert decode_error(b"EAGAIN\0") == "EAGAIN"


def test_strings_without_final_nul_are_rejected() -> None:
    with pytest.raises(RemoteProtocolError):
        decode_strings(b"/a")


def test_strings_with_invalid_utf8_are_rejected() -> None:
    with pytest.raises(RemoteProtocolError):
        decode_strings(b"/\xff\0")


def test_strings_with_wrong_count_are_rejected() -> None:
    with pytest.raises(RemoteProtocolError):
        decode_strings(b"/a\0b\0", 1)


@pytest.mark.parametrize(("text", "perm"), [
    ("n0", Perm(0, Access.NONE)), ("r5", Perm(5, Access.READ)),
    ("w5", Perm(5, Access.WRITE)), ("b65535", Perm(65535, Access.BOTH)),
])
def test_permission_strings_parse_and_print(text: str, perm: Perm) -> None:
    assert Perm.parse(text) == perm
    assert str(perm) == text


@pytest.mark.parametrize("text", ["", "x5", "r", "r-1", "r65536", "R5", " r5"])
def test_bad_permission_strings_are_rejected(text: str) -> None:
    with pytest.raises(RemoteProtocolError):
        Perm.parse(text)


def test_permission_list_must_name_an_owner() -> None:
    with pytest.raises(RemoteProtocolError):
        decode_perms(b"")




def test_reader_needs_data_until_the_header_is_complete() -> None:
    reader = MessageReader()
    reader.receive_data(FRAMES[2][1][:15])
    assert reader.next_message() is NEED_DATA


def test_reader_assembles_a_message_fed_one_byte_at_a_time() -> None:
    frame = FRAMES[14][1]
    reader = MessageReader()
    results = []
    for byte in frame:
        reader.receive_data(bytes([byte]))
        results.append(reader.next_message())
    assert results[:-1] == [NEED_DATA] * (len(frame) - 1)
    assert results[-1] == _frame_message(MsgType.SET_PERMS, frame)


def test_reader_splits_several_messages_from_one_chunk() -> None:
    frames = b"".join(frame for _, frame in FRAMES)
    assert [m.type for m in read_all(frames)] == [kind for kind, _ in FRAMES]


def test_oversized_length_is_rejected_from_the_header_alone() -> None:
    reader = MessageReader()
    reader.receive_data(HEADER.build({"type": 2, "req_id": 0, "tx_id": 0, "len": 4097}))
    with pytest.raises(RemoteProtocolError, match="XENSTORE_PAYLOAD_MAX"):
        reader.next_message()


def test_maximum_payload_is_accepted() -> None:
    (message,) = read_all(Message(MsgType.WRITE, 1, 0, b"x" * XENSTORE_PAYLOAD_MAX).encode())
    assert len(message.payload) == XENSTORE_PAYLOAD_MAX


def test_reader_stays_broken_after_a_protocol_error() -> None:
    reader = MessageReader()
    reader.receive_data(HEADER.build({"type": 2, "req_id": 0, "tx_id": 0, "len": 1 << 31}))
    with pytest.raises(RemoteProtocolError):
        reader.next_message()
    reader.receive_data(FRAMES[2][1])
    with pytest.raises(RemoteProtocolError):
        reader.next_message()


def test_end_of_stream_inside_a_message_is_a_protocol_error() -> None:
    reader = MessageReader()
    reader.receive_data(FRAMES[2][1][:17])
    reader.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="ended inside"):
        reader.next_message()


def test_end_of_stream_between_messages_is_not_an_error() -> None:
    reader = MessageReader()
    reader.receive_data(b"")
    assert reader.next_message() is NEED_DATA


def test_unknown_type_is_kept_as_a_plain_int() -> None:
    (message,) = read_all(HEADER.build({"type": 20, "req_id": 1, "tx_id": 0, "len": 0}))
    assert message.type == 20
    assert not isinstance(message.type, MsgType)


def test_oversized_payload_cannot_be_built() -> None:
    with pytest.raises(LocalProtocolError):
        Message(MsgType.WRITE, 1, 0, b"x" * (XENSTORE_PAYLOAD_MAX + 1))


def test_header_fields_beyond_u32_cannot_be_built() -> None:
    with pytest.raises(LocalProtocolError):
        Message(MsgType.READ, 1 << 32)


u32 = st.integers(0, 0xFFFF_FFFF)


@given(kind=u32, req_id=u32, tx_id=u32, length=u32, tail=st.binary(max_size=64))
def test_any_header_yields_a_message_need_data_or_a_protocol_error(
    kind: int, req_id: int, tx_id: int, length: int, tail: bytes
) -> None:
    reader = MessageReader()
    reader.receive_data(HEADER.build(
        {"type": kind, "req_id": req_id, "tx_id": tx_id, "len": length}) + tail)
    if length > XENSTORE_PAYLOAD_MAX:
        with pytest.raises(RemoteProtocolError):
            reader.next_message()
    elif length > len(tail):
        assert reader.next_message() is NEED_DATA
    else:
        message = reader.next_message()
        assert message == Message(kind, req_id, tx_id, tail[:length])


@given(st.binary(max_size=9000))
def test_garbage_only_ever_raises_remote_protocol_error(data: bytes) -> None:
    reader = MessageReader()
    reader.receive_data(data)
    reader.receive_data(b"")
    try:
        while reader.next_message() is not NEED_DATA:
            pass
    except RemoteProtocolError:
        pass


@given(
    messages=st.lists(st.builds(Message, u32, u32, u32, st.binary(max_size=300)), max_size=5),
    cuts=st.lists(st.integers(0, 2000), max_size=8),
)
def test_messages_survive_any_chunking(messages: list[Message], cuts: list[int]) -> None:
    stream = b"".join(m.encode() for m in messages)
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    reader = MessageReader()
    received = []
    for start, end in zip(points, points[1:]):
        reader.receive_data(stream[start:end])
        while (message := reader.next_message()) is not NEED_DATA:
            received.append(message)
    assert received == messages
