"""`pmemd.ioreq.abi` against hand-built buffers: Xen's `ioreq_t` byte for byte."""

from __future__ import annotations

import struct

import pytest

from pmemd.ioreq import abi
from pmemd.ioreq.abi import Ioreq, ioreq_t, shared_iopage_t


def hand_built(addr=0, data=0, count=0, size=0, vp_eport=0, bits=0, type_=0) -> bytes:
    buf = bytearray(32)
    buf[0:8] = addr.to_bytes(8, "little")
    buf[8:16] = data.to_bytes(8, "little")
    buf[16:20] = count.to_bytes(4, "little")
    buf[20:24] = size.to_bytes(4, "little")
    buf[24:28] = vp_eport.to_bytes(4, "little")
    buf[30] = bits
    buf[31] = type_
    return bytes(buf)


def test_ioreq_t_is_32_bytes_and_the_page_holds_128_slots():
    assert ioreq_t.sizeof() == 32
    assert shared_iopage_t.sizeof() == 4096
    assert abi.MAX_VCPUS == 128


def test_constants_match_xen_public_header():
    assert (abi.IOREQ_WRITE, abi.IOREQ_READ) == (0, 1)
    assert (abi.STATE_IOREQ_NONE, abi.STATE_IOREQ_READY, abi.STATE_IOREQ_INPROCESS, abi.STATE_IORESP_READY) == (
        0, 1, 2, 3,
    )
    assert (abi.IOREQ_TYPE_PIO, abi.IOREQ_TYPE_COPY, abi.IOREQ_TYPE_PCI_CONFIG) == (0, 1, 2)
    assert (abi.IOREQ_TYPE_TIMEOFFSET, abi.IOREQ_TYPE_INVALIDATE) == (7, 8)


def test_state_ready_with_dir_read_is_byte_0x21():
    assert abi.make_bits(abi.STATE_IOREQ_READY, dir=abi.IOREQ_READ) == 0x21


def test_bitfield_is_allocated_lsb_first():
    assert abi.make_bits(abi.STATE_IORESP_READY) == 0x03
    assert abi.make_bits(0, data_is_ptr=True) == 0x10
    assert abi.make_bits(0, dir=abi.IOREQ_READ) == 0x20
    assert abi.make_bits(0, df=True) == 0x40


def test_bitfield_accessors_decode_each_field():
    bits = 0x40 | 0x20 | 0x10 | 0x2
    assert abi.bits_state(bits) == abi.STATE_IOREQ_INPROCESS
    assert abi.bits_data_is_ptr(bits) and abi.bits_df(bits)
    assert abi.bits_dir(bits) == abi.IOREQ_READ


def test_with_state_replaces_only_the_state_nibble():
    assert abi.with_state(0xF1, abi.STATE_IORESP_READY) == 0xF3


def test_parse_reads_every_field_at_its_xen_offset():
    raw = hand_built(
        addr=0xFBFF_F008, data=0x1122334455667788, count=3, size=4, vp_eport=17, bits=0x61, type_=1
    )
    req = Ioreq.parse(raw)
    assert req == Ioreq(
        addr=0xFBFF_F008, data=0x1122334455667788, count=3, size=4, vp_eport=17,
        state=abi.STATE_IOREQ_READY, data_is_ptr=False, dir=abi.IOREQ_READ, df=True, type=abi.IOREQ_TYPE_COPY,
    )


def test_build_is_the_exact_inverse_of_parse_including_pad_bits():
    raw = bytearray(hand_built(addr=0x0A18, data=5, count=1, size=4, vp_eport=3, bits=0x91, type_=0))
    raw[28:30] = b"\xaa\x55"
    assert Ioreq.parse(raw).build() == bytes(raw)


def test_build_places_fields_byte_exactly():
    req = Ioreq(
        addr=0x0A18, data=0xDEAD, count=1, size=4, vp_eport=9, state=abi.STATE_IOREQ_READY,
        data_is_ptr=False, dir=abi.IOREQ_WRITE, df=False, type=abi.IOREQ_TYPE_PIO,
    )
    assert req.build() == hand_built(addr=0x0A18, data=0xDEAD, count=1, size=4, vp_eport=9, bits=0x01, type_=0)


def test_hot_path_struct_agrees_with_the_construct_declaration():
    raw = hand_built(addr=1, data=2, count=3, size=8, vp_eport=4, bits=0x35, type_=1)
    c = ioreq_t.parse(raw)
    assert abi.SLOT_STRUCT.unpack(raw) == (c.addr, c.data, c.count, c.size, c.vp_eport, c._pad0, c.bits, c.type)
    assert abi.SLOT_STRUCT.size == abi.IOREQ_SIZE


@pytest.mark.parametrize(
    ("name", "offset"),
    [("addr", abi.ADDR_OFFSET), ("data", abi.DATA_OFFSET), ("count", abi.COUNT_OFFSET),
     ("size", abi.SIZE_OFFSET), ("vp_eport", abi.VP_EPORT_OFFSET), ("bits", abi.BITS_OFFSET),
     ("type", abi.TYPE_OFFSET)],
)
def test_hot_path_offsets_match_the_declaration(name, offset):
    fields = {"addr": 8, "data": 8, "count": 4, "size": 4, "vp_eport": 4, "bits": 1, "type": 1}
    value = {8: 0x0102030405060708, 4: 0x0A0B0C0D, 1: 0x7F}[fields[name]]
    raw = ioreq_t.build(dict(addr=0, data=0, count=0, size=0, vp_eport=0, _pad0=0, bits=0, type=0) | {name: value})
    assert raw[offset:offset + fields[name]] == value.to_bytes(fields[name], "little")


def test_slots_are_indexed_by_vcpu_id():
    page = bytearray(4096)
    page[abi.slot_offset(5):abi.slot_offset(5) + 32] = hand_built(addr=0x1234, vp_eport=42, bits=0x21, type_=1)
    parsed = shared_iopage_t.parse(bytes(page))
    assert parsed.vcpu_ioreq[5].addr == 0x1234 and parsed.vcpu_ioreq[5].vp_eport == 42
    assert parsed.vcpu_ioreq[5].bits == 0x21
    assert struct.unpack_from("<Q", page, 5 * 32)[0] == 0x1234


def test_slot_offset_rejects_vcpus_beyond_the_page():
    with pytest.raises(ValueError):
        abi.slot_offset(128)
