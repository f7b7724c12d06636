"""robot.send.protocol's pure parts: reply parsing, the DATA payload, command paths."""

from __future__ import annotations

import pytest

from robot.send.protocol import (
    MAX_LINE,
    MalformedReply,
    SmtpReply,
    data_payload,
    parse_reply,
    path,
)

# -- parse_reply ----------------------------------------------------------------------------


def test_single_line_reply() -> None:
    buffer = b"250 2.1.0 Ok\r\n"
    assert parse_reply(buffer) == (SmtpReply(250, "2.1.0 Ok"), len(buffer))


def test_multi_line_reply_joins_its_texts_with_newlines() -> None:
    buffer = b"250-a\r\n250 b\r\n"
    assert parse_reply(buffer) == (SmtpReply(250, "a\nb"), len(buffer))


def test_ok_is_true_for_2xx_only() -> None:
    assert SmtpReply(250, "").ok and SmtpReply(299, "").ok
    assert not SmtpReply(354, "").ok and not SmtpReply(199, "").ok


@pytest.mark.parametrize(
    "pieces",
    [
        [b"25", b"0 Ok\r", b"\n"],
        [b"250-first\r\n", b"250-sec", b"ond\r\n250 th", b"ird\r\n"],
        [bytes([byte]) for byte in b"250-first\r\n250 last\r\n"],
    ],
    ids=["one line in three", "three lines in four", "one byte at a time"],
)
def test_a_reply_split_across_buffers_is_none_until_its_last_line_is_complete(
    pieces: list[bytes],
) -> None:
    buffer = bytearray()
    for piece in pieces[:-1]:
        buffer += piece
        assert parse_reply(buffer) is None, bytes(buffer)
    buffer += pieces[-1]
    parsed = parse_reply(buffer)
    assert parsed is not None
    reply, offset = parsed
    assert offset == len(buffer)
    assert reply.code == 250
    assert reply.text.replace("\n", " ") in ("Ok", "first second third", "first last")


def test_several_replies_in_one_buffer_are_read_by_offset() -> None:
    buffer = b"250 2.1.0 Ok\r\n550-5.1.1 No such\r\n550 5.1.1 user\r\n354 Go ahead\r\n421 par"
    replies = []
    offset = 0
    while (parsed := parse_reply(buffer, offset)) is not None:
        reply, offset = parsed
        replies.append(reply)
    assert replies == [
        SmtpReply(250, "2.1.0 Ok"),
        SmtpReply(550, "5.1.1 No such\n5.1.1 user"),
        SmtpReply(354, "Go ahead"),
    ]
    assert buffer[offset:] == b"421 par"  # the incomplete last one is left for later


def test_offset_is_absolute_when_starting_inside_the_buffer() -> None:
    buffer = b"junk before250 Ok\r\n"
    assert parse_reply(buffer, 11) == (SmtpReply(250, "Ok"), len(buffer))


@pytest.mark.parametrize(
    "buffer",
    [
        b"hello\r\n",
        b"25 Ok\r\n",
        b"\r\n",
        b"ABC Ok\r\n",
        b"250-first\r\nnot a reply\r\n",
    ],
    ids=["words", "two digits", "empty line", "letters", "bad continuation"],
)
def test_a_line_without_a_three_digit_code_is_malformed(buffer: bytes) -> None:
    with pytest.raises(MalformedReply, match="malformed SMTP reply line"):
        parse_reply(buffer)


def test_a_continuation_line_with_another_code_is_malformed() -> None:
    with pytest.raises(MalformedReply, match="451 b"):
        parse_reply(b"250-a\r\n451 b\r\n")


def test_the_error_shows_a_shortened_line() -> None:
    with pytest.raises(MalformedReply) as caught:
        parse_reply(b"x" * 200 + b"\r\n")
    assert "x" * 80 in str(caught.value) and "x" * 81 not in str(caught.value)


def test_a_line_of_max_line_bytes_is_accepted() -> None:
    line = b"250 " + b"a" * (MAX_LINE - 6) + b"\r\n"
    assert len(line) == MAX_LINE
    parsed = parse_reply(line)
    assert parsed is not None and parsed[0].text == "a" * (MAX_LINE - 6)


def test_a_complete_line_longer_than_max_line_is_malformed() -> None:
    with pytest.raises(MalformedReply, match=f"longer than {MAX_LINE}"):
        parse_reply(b"250 " + b"a" * (MAX_LINE - 5) + b"\r\n")


def test_an_unfinished_line_longer_than_max_line_is_malformed_before_its_end_comes() -> None:
    head = b"250 " + b"a" * (MAX_LINE - 4)
    assert len(head) == MAX_LINE
    assert parse_reply(head) is None  # may still end in time
    with pytest.raises(MalformedReply, match=f"longer than {MAX_LINE}"):
        parse_reply(head + b"a")


def test_bare_lf_line_endings_are_accepted() -> None:
    buffer = b"250-one\n250 two\n354 go\n"
    parsed = parse_reply(buffer)
    assert parsed is not None
    assert parsed[0] == SmtpReply(250, "one\ntwo")
    assert parse_reply(buffer, parsed[1]) == (SmtpReply(354, "go"), len(buffer))


@pytest.mark.parametrize("buffer", [b"250\r\n", b"250 \r\n", b"250\n"])
def test_a_code_without_text(buffer: bytes) -> None:
    assert parse_reply(buffer) == (SmtpReply(250, ""), len(buffer))


def test_text_is_stripped_and_decoded_as_utf8_with_replacement() -> None:
    parsed = parse_reply("250-  Grüße \t\r\n".encode() + b"250 \xff\r\n")
    assert parsed is not None
    assert parsed[0].text == "Grüße\n\ufffd"


@pytest.mark.parametrize(
    ("line", "text"),
    [
        (b"250 2.0.0 queued as \x00ABC\r\n", "2.0.0 queued as \\x00ABC"),
        (b"451 4.3.0 temporary \x00 failure\r\n", "4.3.0 temporary \\x00 failure"),
        (b"250 a\x01b\x1bc\x1fd\x7fe\r\n", "a\\x01b\\x1bc\\x1fd\\x7fe"),
        (b"250 bare\rcarriage return\r\n", "bare\\x0dcarriage return"),
        (b"250 a\tb\r\n", "a b"),
    ],
    ids=["NUL", "NUL alone", "other C0 and DEL", "bare CR", "tab"],
)
def test_control_characters_in_a_reply_are_escaped(line: bytes, text: str) -> None:
    """A server's bytes end up in the database: PostgreSQL text cannot hold a NUL, and no
    log or console should be handed terminal escapes."""
    parsed = parse_reply(line)
    assert parsed is not None
    assert parsed[0].text == text


def test_a_multi_line_reply_keeps_only_its_joining_newlines() -> None:
    parsed = parse_reply(b"250-one\x00\r\n250-two\x0b\r\n250 three\r\n")
    assert parsed is not None
    assert parsed[0].text == "one\\x00\ntwo\\x0b\nthree"
    assert not [c for c in parsed[0].text if (ord(c) < 32 and c != "\n") or ord(c) == 127]


# -- data_payload ---------------------------------------------------------------------------


def test_crlf_message_is_kept_and_terminated() -> None:
    message = b"Subject: hi\r\n\r\nline one\r\nline two\r\n"
    assert data_payload(message) == message + b".\r\n"


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (b"a\nb\n", b"a\r\nb\r\n"),
        (b"a\rb\r", b"a\r\nb\r\n"),
        (b"a\r\nb\nc\rd\r\n", b"a\r\nb\r\nc\r\nd\r\n"),
        (b"a\n\nb\r\n", b"a\r\n\r\nb\r\n"),
        (b"a\r\r\nb\r\n", b"a\r\n\r\nb\r\n"),  # a bare CR before a CRLF: two line ends
    ],
    ids=["bare LF", "bare CR", "mixed", "empty line, LF", "CR then CRLF"],
)
def test_bare_line_endings_become_crlf(message: bytes, expected: bytes) -> None:
    assert data_payload(message) == expected + b".\r\n"


def test_leading_dots_are_doubled_on_every_line() -> None:
    message = b"Subject: dots\r\n\r\n.\r\n..two\r\nmid.dle\r\n. space\r\n"
    assert data_payload(message) == (
        b"Subject: dots\r\n\r\n..\r\n...two\r\nmid.dle\r\n.. space\r\n.\r\n"
    )


def test_a_leading_dot_at_the_very_start_is_doubled() -> None:
    assert data_payload(b".hidden\r\nnext\r\n") == b"..hidden\r\nnext\r\n.\r\n"


def test_a_dot_after_a_bare_line_ending_is_doubled_too() -> None:
    assert data_payload(b"a\n.b\r.c") == b"a\r\n..b\r\n..c\r\n.\r\n"


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (b"no newline", b"no newline\r\n.\r\n"),
        (b".", b"..\r\n.\r\n"),
        (b"", b"\r\n.\r\n"),
    ],
    ids=["text", "a lone dot", "empty"],
)
def test_a_message_without_final_newline_gets_one(message: bytes, expected: bytes) -> None:
    assert data_payload(message) == expected


def test_the_payload_never_ends_early() -> None:
    """No line of the payload but the last is a lone "." (it would end DATA there)."""
    message = b".\n.\r\n\r.\r\n..\r\n.\r"
    payload = data_payload(message)
    lines = payload.split(b"\r\n")
    assert lines[-2:] == [b".", b""]
    assert b"." not in lines[:-2]
    assert b"\r" not in payload.replace(b"\r\n", b"") and b"\n" not in payload.replace(b"\r\n", b"")


# -- path -----------------------------------------------------------------------------------


def test_ascii_address() -> None:
    assert path("robot@example.org") == b"<robot@example.org>"


def test_null_sender() -> None:
    assert path("") == b"<>"


def test_a_non_ascii_address_is_refused_without_smtputf8() -> None:
    """The robot does not use SMTPUTF8: compose refuses such addresses, and the command
    line would not carry them either."""
    with pytest.raises(ValueError, match="cannot go on an SMTP command line"):
        path("jörg@example.org")


@pytest.mark.parametrize(
    "address",
    [
        "a@b\r\nRCPT TO:<evil@example.org>",
        "a@b\nDATA",
        "a@b\r",
        "a\x00@b",
        "a\t@b",
        "a\x7f@b",
        "<a@b>",
        "a@b>",
        "a<b@c",
    ],
    ids=["CRLF command", "LF", "CR", "NUL", "tab", "DEL", "brackets", "closing", "opening"],
)
def test_an_address_that_could_break_the_command_line_is_refused(address: str) -> None:
    with pytest.raises(ValueError, match="cannot go on an SMTP command line"):
        path(address)
