#!/usr/bin/env python3
"""Writes the seed corpus under fuzz/corpus/<target>/ (run from anywhere).

Realistic Agent requests and intake answers, plus the classic request
smuggling and framing-confusion shapes. Re-running rewrites the same files.
"""
import os

HERE = os.path.dirname(os.path.abspath(__file__))
KEY = "5f2c8a1e9b7d4c3a6e0f1b2d3c4a5e6f"
AGENT = "User-Agent: datadog-agent/7.55.0\r\nDD-Agent-Version: 7.55.0\r\n"


def post(path, body, extra="", host="127.0.0.1:9804"):
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\n{AGENT}DD-API-KEY: {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Encoding: zstd\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def chunked(*chunks, ext="", trailer=""):
    out = b""
    for c in chunks:
        out += b"%x%s\r\n%s\r\n" % (len(c), ext.encode(), c)
    return out + b"0\r\n" + trailer.encode() + b"\r\n"


LOGS_HEAD = (
    f"POST /api/v2/logs HTTP/1.1\r\nHost: 127.0.0.1:9808\r\n{AGENT}DD-API-KEY: {KEY}\r\n"
    "DD-EVP-ORIGIN: agent\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
    "Transfer-Encoding: chunked\r\n\r\n"
).encode()
SERIES = b'{"series":[{"metric":"system.load.1","points":[{"timestamp":1700000000,"value":0.5}]}]}'
SMALL = b"POST /api/v2/series HTTP/1.1\r\nHost: x\r\n"

REQUESTS = {
    "series_cl": post("/api/v2/series", SERIES),
    "sketches_keepalive": post("/api/beta/sketches", b"\x28\xb5\x2f\xfd" + b"\x00" * 40, "Connection: keep-alive\r\n"),
    "logs_chunked": LOGS_HEAD + chunked(b'[{"message":"hello"}]', b'[{"message":"world"}]'),
    "logs_chunked_ext_trailer": LOGS_HEAD + chunked(b"abc", b"defgh", ext=";name=value", trailer="X-Checksum: 1\r\n"),
    "validate_get": f"GET /api/v1/validate?api_key={KEY} HTTP/1.1\r\nHost: 127.0.0.1:9804\r\n{AGENT}\r\n".encode(),
    "expect_continue": post("/api/v0.2/traces", b"\x00" * 64, "Expect: 100-continue\r\n", "127.0.0.1:9805"),
    "pipelined_pair": post("/api/v2/series", SERIES) + post("/api/v1/check_run", b"[]"),
    "flare_multipart": post("/support/flare/12345", b"--b\r\n\r\nx\r\n--b--\r\n", "X-Datadog-Hostname: h\r\n"),
    "http10_keepalive": b"POST /intake/ HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n{}",
    "hop_by_hop": SMALL + b"Connection: close, X-Private\r\nX-Private: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n"
    b"Upgrade: h2c\r\nProxy-Connection: keep-alive\r\nTrailer: X\r\nContent-Length: 1\r\n\r\nA",
    "post_no_body": b"POST /api/v1/metadata HTTP/1.1\r\nHost: x\r\n\r\n",
    "partial_head": SMALL + b"Content-Le",
    # Smuggling and framing confusion: all must be refused.
    "cl_te": SMALL + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te_cl": SMALL + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    "te_xchunked": SMALL + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "te_space_colon": SMALL + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "te_tab_value": SMALL + b"Transfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n",
    "te_duplicated": SMALL + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te_list": SMALL + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "te_identity": SMALL + b"Transfer-Encoding: identity\r\nContent-Length: 1\r\n\r\nA",
    "cl_list": SMALL + b"Content-Length: 5, 5\r\n\r\nhello",
    "cl_differing": SMALL + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "cl_same_twice": SMALL + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "cl_signed": SMALL + b"Content-Length: +5\r\n\r\nhello",
    "cl_huge": SMALL + b"Content-Length: 99999999999999999999\r\n\r\n",
    "chunk_size_overflow": LOGS_HEAD + b"ffffffffffffffffff\r\n",
    "lf_only": b"POST /api/v2/series HTTP/1.1\nHost: x\nContent-Length: 1\n\nA",
    "bare_cr": SMALL + b"X-A: 1\rContent-Length: 1\r\n\r\nA",
    "obs_fold": SMALL + b"X-A: 1\r\n Content-Length: 1\r\n\r\nA",
    "name_with_space": SMALL + b"Content Length: 1\r\n\r\nA",
    "nul_in_value": SMALL + b"X-A: a\x00b\r\nContent-Length: 1\r\n\r\nA",
    "absolute_form": b"POST http://evil.example/api/v2/series HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nA",
    "asterisk_form": b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
    "duplicate_host": SMALL + b"Host: y\r\nContent-Length: 1\r\n\r\nA",
    "expect_other": SMALL + b"Expect: 200-ok\r\nContent-Length: 1\r\n\r\nA",
    "http2_version": b"POST / HTTP/2.0\r\n\r\n",
    "connection_nominates_length": SMALL + b"Connection: Content-Length\r\nContent-Length: 5\r\n\r\nhello",
    "oversized_field": SMALL + b"X-Big: " + b"a" * 9000 + b"\r\nContent-Length: 1\r\n\r\nA",
}

CHUNKED = {
    "two_chunks": chunked(b"hello", b" world"),
    "ext_and_trailer": chunked(b"hello", ext=';a=1;b="x y"', trailer="X-T: 1\r\nX-U: 2\r\n"),
    "last_chunk_only": b"0\r\n\r\n",
    "pipelined_next": chunked(b"abc") + b"POST /api/v2/series HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    "upper_hex_leading_zeros": b"000A\r\n0123456789\r\n00\r\n\r\n",
    "size_overflow": b"ffffffffffffffffff\r\n",
    "size_15_digits": b"fffffffffffffff\r\nab",
    "lf_only": b"5\nhello\n0\n\n",
    "space_after_size": b"5 \r\nhello\r\n0\r\n\r\n",
    "negative_size": b"-5\r\nhello\r\n0\r\n\r\n",
    "missing_crlf_after_data": b"5\r\nhelloX\r\n0\r\n\r\n",
    "bad_trailer": b"0\r\nbad\ntrailer\r\n\r\n",
    "long_extension": b"1;" + b"e" * 5000 + b"\r\nA\r\n0\r\n\r\n",
    "truncated": b"a\r\n01234",
}

RESPONSES = {
    "accepted_cl": b'HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 2\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\n\r\n{}',
    "accepted_keepalive": b"HTTP/1.1 202 Accepted\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\n{}",
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b'{"valid":true}'),
    "no_content": b"HTTP/1.1 204 No Content\r\nX-Request-Id: 1\r\n\r\n",
    "not_modified": b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
    "continue_then_accepted": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}",
    "close_delimited": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close",
    "http10_close": b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nabc",
    "forbidden": b'HTTP/1.1 403 Forbidden\r\nContent-Length: 25\r\nConnection: close\r\n\r\n{"errors":["Forbidden"]}\n',
    "too_large": b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 0\r\n\r\n",
    "unavailable": b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n",
    "cl_and_te": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "cl_differing": b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "te_gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    "connection_nominates_length": b"HTTP/1.1 202 Accepted\r\nConnection: content-length\r\nContent-Length: 2\r\n\r\n{}",
    "two_digit_status": b"HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n",
    "partial": b"HTTP/1.1 202 Acc",
}


def write(target, seeds):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


write("request", REQUESTS)
write("chunked", CHUNKED)
write("response", RESPONSES)
