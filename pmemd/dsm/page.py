"""Reading a request from, and writing a reply to, the DSM page (layout: `acpi.dsm_buffer`).

The page is guest memory: the guest may rewrite it while a call is being served. Decoding
therefore starts from a private copy and every later step sees only that copy.
"""

from __future__ import annotations

from construct import ConstructError, Int32ul

from acpi.dsm_buffer import (
    HEADER_OFFSET,
    HEADER_SIZE,
    INPUT_OFFSET,
    MAX_INPUT,
    MAX_PAYLOAD,
    PAGE_SIZE,
    REPLY_PAYLOAD_OFFSET,
    DsmReply,
    DsmRequestHeader,
)

from .call import Call, StatusField

MaskField = Int32ul
"""Function 0's whole payload: the supported-function bitmap (no status word)."""


class MalformedRequest(Exception):
    """The header is readable but its input length does not fit the page."""

    def __init__(self, handle: int, revision: int, function: int, input_length: int) -> None:
        super().__init__(f"input length {input_length} exceeds {MAX_INPUT}")
        self.handle = handle
        self.revision = revision
        self.function = function


def decode_request(page: bytes | bytearray | memoryview) -> Call:
    """Decode the request in `page` (exactly one page) from a private copy of its bytes.

    Errors: `MalformedRequest` if the input length exceeds `MAX_INPUT`; `ValueError` if
    `page` is not `PAGE_SIZE` bytes (a transport bug, not guest input).
    """
    snapshot = bytes(page)
    if len(snapshot) != PAGE_SIZE:
        raise ValueError(f"a DSM page is {PAGE_SIZE} bytes, got {len(snapshot)}")
    header = DsmRequestHeader.parse(snapshot[HEADER_OFFSET : HEADER_OFFSET + HEADER_SIZE])
    if header.input_length > MAX_INPUT:
        raise MalformedRequest(header.handle, header.revision, header.function, header.input_length)
    data = snapshot[INPUT_OFFSET : INPUT_OFFSET + header.input_length]
    return Call(header.handle, header.revision, header.function, data)


def encode_payload(payload: bytes) -> bytes:
    """The reply bytes for `payload`: the length word (counting itself), then the payload."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"reply payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return DsmReply.build({"length": REPLY_PAYLOAD_OFFSET + len(payload), "payload": payload})


def encode_status(status: int, output: bytes = b"") -> bytes:
    """The reply bytes for a status word followed by `output`."""
    return encode_payload(StatusField.build(status) + output)


def encode_mask(mask: int) -> bytes:
    """The reply bytes for function 0: the 4-byte supported-function mask alone."""
    return encode_payload(MaskField.build(mask))


def encode_request(handle: int, revision: int, function: int, data: bytes = b"", *, input_length: int | None = None) -> bytes:
    """A whole page carrying a request, as the guest's AML writes it (for tests and the simulator).

    `input_length` overrides the length word, to describe malformed requests.
    """
    if len(data) > MAX_INPUT:
        raise ValueError(f"{len(data)} input bytes do not fit the page ({MAX_INPUT} at most)")
    page = bytearray(PAGE_SIZE)
    length = len(data) if input_length is None else input_length
    page[HEADER_OFFSET : HEADER_OFFSET + HEADER_SIZE] = DsmRequestHeader.build(
        {"handle": handle, "revision": revision, "function": function, "input_length": length}
    )
    page[INPUT_OFFSET : INPUT_OFFSET + len(data)] = data
    return bytes(page)


def decode_reply(reply: bytes) -> bytes:
    """The payload of reply bytes, checking the length word against them (as the AML reads it).

    Errors: `ValueError` when the length word and the bytes disagree.
    """
    try:
        return DsmReply.parse(reply).payload
    except ConstructError as e:
        raise ValueError(f"malformed reply: {e}") from None
