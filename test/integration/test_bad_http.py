"""Malformed and hostile HTTP gets Envoy's answers, a stat moves, and nothing
reaches the upstream that the client did not legitimately ask for.

Envoy's HTTP/1 codec (source/common/http/http1/codec_impl.cc):
- Content-Length together with Transfer-Encoding: 400 (unless
  allow_chunked_length);
- a Transfer-Encoding other than exactly "chunked": 501 Not Implemented;
- headers larger than max_request_headers_kb (60 KiB default) or more than
  max_headers_count (100 default): 431;
- invalid header names, bad request lines, bad chunk sizes: 400;
- HTTP/1.0 is refused with 426 unless accept_http_10;
- every codec error closes the connection and counts
  http.<stat_prefix>.downstream_cx_protocol_error.
HTTP/2 connection errors (e.g. DATA on stream 0) end in GOAWAY with
PROTOCOL_ERROR.
"""
import pytest

from lib import config as cfg
from lib.h2client import (FLAG_END_HEADERS, FLAG_END_STREAM, FRAME_DATA, FRAME_GOAWAY, FRAME_HEADERS,
                          FRAME_RST_STREAM, PROTOCOL_ERROR, H2Client, frame, goaway_of, hpack_headers, raw_connect,
                          read_frames, rst_of)
from lib.rawhttp import RawHTTP, one_shot
from lib.wait import wait_for

PROTO_ERR = "http.ingress_http.downstream_cx_protocol_error"


@pytest.fixture
def proxied(legate, ports, upstream):
    up = upstream()
    lg = legate(cfg.simple_proxy(ports(), ports(), [up.port]))
    return lg, up


def expect_rejected(lg, up, data, status):
    """Sends data on a fresh connection: expects `status`, a closed connection,
    a protocol-error stat, and no request at the upstream."""
    before = lg.admin.stat(PROTO_ERR)
    seen_before = len(up.requests)
    r, closed = one_shot(lg.listener_port(), data)
    assert r is not None, "connection closed without a response"
    assert r.status == status, f"got {r.status} {r.reason}, want {status}"
    assert closed, "connection left open after a protocol error"
    wait_for(lambda: lg.admin.stat(PROTO_ERR) > before, timeout=3, what=f"{PROTO_ERR} to increase")
    new = up.requests[seen_before:]
    assert new == [], f"upstream saw {[x['path'] for x in new]}"
    return r


SMUGGLING = {
    "cl_and_te": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "te_and_cl": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n"
                  b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "two_content_lengths": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 41\r\n\r\n"
                            b"hello" + b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "te_not_chunked_last": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n"
                            b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", 501),
    "te_gzip_chunked": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", 501),
    "te_space_before_colon": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\n"
                              b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "content_length_not_a_number": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\nx", 400),
    "chunk_size_not_hex": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"5x\r\nhello\r\n0\r\n\r\n", 400),
    "chunk_size_overflow": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"fffffffffffffffff1\r\nhello\r\n0\r\n\r\n", 400),
}


@pytest.mark.parametrize("name", sorted(SMUGGLING))
def test_smuggling_vectors_rejected(proxied, name):
    lg, up = proxied
    data, status = SMUGGLING[name]
    expect_rejected(lg, up, data, status)


@pytest.mark.parametrize("data", [
    b"GARBAGE\r\n\r\n",
    b"GET\r\n\r\n",
    b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n",
    b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Ctl\x01: v\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n(paren): v\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Nul: a\x00b\r\n\r\n",
], ids=["garbage", "no_target", "extra_token", "nul_in_target", "space_in_name", "ctl_in_name",
        "paren_in_name", "nul_in_value"])
def test_malformed_requests_get_400(proxied, data):
    lg, up = proxied
    expect_rejected(lg, up, data, 400)


def test_http10_refused_with_426(proxied):
    lg, up = proxied
    r, closed = one_shot(lg.listener_port(), b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
    assert r is not None and r.status == 426
    assert up.requests == []


def test_oversized_headers_431(proxied):
    lg, up = proxied
    big = b"X-Big: " + b"a" * (70 * 1024) + b"\r\n"
    expect_rejected(lg, up, b"GET / HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n", 431)


def test_headers_just_under_default_limit_pass(proxied):
    lg, up = proxied
    r, _ = one_shot(lg.listener_port(), b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: " +
                    b"a" * (50 * 1024) + b"\r\n\r\n")
    assert r.status == 200


def test_too_many_headers_431(proxied):
    lg, up = proxied
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(150))
    expect_rejected(lg, up, b"GET / HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n", 431)


def test_configured_header_limits(legate, ports, upstream):
    up = upstream()
    lg = legate(cfg.simple_proxy(ports(), ports(), [up.port], max_request_headers_kb=8,
                                 common_http_protocol_options={"max_headers_count": 20}))
    few = b"".join(b"X-H%d: v\r\n" % i for i in range(10))
    r, _ = one_shot(lg.listener_port(), b"GET /few HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + few + b"\r\n")
    assert r.status == 200
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(30))
    expect_rejected(lg, up, b"GET /many HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n", 431)
    big = b"X-Big: " + b"a" * (10 * 1024) + b"\r\n"
    expect_rejected(lg, up, b"GET /big HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n", 431)
    assert [x["path"] for x in up.requests] == ["/few"]


def test_valid_pipelined_body_is_not_a_second_request(proxied):
    """A body that looks like a request stays a body."""
    lg, up = proxied
    inner = b"GET /inner HTTP/1.1\r\nHost: x\r\n\r\n"
    with RawHTTP("127.0.0.1", lg.listener_port()) as c:
        c.send(b"POST /outer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(inner) + inner)
        r = c.read_response()
        assert r.status == 200 and r.json()["body_len"] == len(inner)
        c.request("GET", "/next")
        assert c.read_response().status == 200
    assert [x["path"] for x in up.requests] == ["/outer", "/next"]


def test_bad_request_does_not_disturb_other_connections(proxied):
    lg, up = proxied
    with RawHTTP("127.0.0.1", lg.listener_port()) as good:
        good.request("GET", "/before")
        assert good.read_response().status == 200
        r, _ = one_shot(lg.listener_port(), b"GARBAGE\r\n\r\n")
        assert r.status == 400
        good.request("GET", "/after")
        assert good.read_response().status == 200
    assert [x["path"] for x in up.requests] == ["/before", "/after"]


def test_h2_data_on_stream_0_is_goaway_protocol_error(proxied):
    lg, up = proxied
    with H2Client("127.0.0.1", lg.listener_port()) as other:
        before = lg.admin.stat(PROTO_ERR)
        s = raw_connect("127.0.0.1", lg.listener_port())
        s.sendall(frame(FRAME_DATA, FLAG_END_STREAM, 0, b"oops"))
        frames = read_frames(s, timeout=5, until=lambda f: f[0] == FRAME_GOAWAY)
        s.close()
        ga = goaway_of(frames)
        assert ga is not None, f"no GOAWAY; frames: {[f[0] for f in frames]}"
        assert ga[0] == PROTOCOL_ERROR
        assert other.get("/still-fine").status == 200
    wait_for(lambda: lg.admin.stat(PROTO_ERR) > before, timeout=3, what=f"{PROTO_ERR} to increase")


def test_h2_headers_on_even_stream_is_protocol_error(proxied):
    lg, up = proxied
    s = raw_connect("127.0.0.1", lg.listener_port())
    block = hpack_headers([(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", "/even")])
    s.sendall(frame(FRAME_HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 2, block))
    frames = read_frames(s, timeout=5, until=lambda f: f[0] == FRAME_GOAWAY)
    s.close()
    ga = goaway_of(frames)
    assert ga is not None and ga[0] == PROTOCOL_ERROR
    assert up.requests == []


def test_h2_uppercase_header_name_rejected(proxied):
    lg, up = proxied
    s = raw_connect("127.0.0.1", lg.listener_port())
    block = hpack_headers([(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", "/upper"),
                           ("X-Upper", "1")])
    s.sendall(frame(FRAME_HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 1, block))
    frames = read_frames(s, timeout=5, until=lambda f: f[0] in (FRAME_GOAWAY, FRAME_RST_STREAM))
    s.close()
    codes = [c for c in (rst_of(frames, 1), (goaway_of(frames) or (None,))[0]) if c is not None]
    assert PROTOCOL_ERROR in codes, f"frames: {[f[0] for f in frames]}"
    assert up.requests == []


def test_h2_garbage_preface(proxied):
    lg, up = proxied
    with H2Client("127.0.0.1", lg.listener_port()) as other:
        r, closed = one_shot(lg.listener_port(), b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + b"\x00" * 20)
        # Either an HTTP/1 400 or a dropped connection: nothing is proxied and the other connection lives on.
        assert r is None or r.status == 400
        assert other.get("/ok").status == 200
    assert [x["path"] for x in up.requests] == ["/ok"]
