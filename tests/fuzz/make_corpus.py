#!/usr/bin/env python3
"""Write the seed corpus of every fuzz target into tests/fuzz/corpus.

Each seed is a small, meaningful input in the layout its target reads
(see the comment at the top of each fuzz_<name>.c). The HTTP/2 frames are
built by hand from RFC 9113 section 4.1 (frame header) and RFC 7541
(HPACK, literal fields without indexing), so no HTTP/2 library is needed.
Run it again after changing a target's input layout; it overwrites the
seeds it writes and leaves other files alone.
"""

import pathlib
import struct

HERE = pathlib.Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
DEMO_CONFIG = HERE.parent.parent / "demo" / "tutti.json"


def write(target, name, data):
    path = CORPUS / target / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)


def with_cuts(stream, cuts, flag=0):
    """Prefix |stream| with the cut header of chunks.h."""
    assert len(cuts) <= 7
    head = bytes([len(cuts) | flag])
    for cut in cuts:
        head += struct.pack(">H", cut)
    return head + stream


# -- config ---------------------------------------------------------------

def config_seeds():
    write("config", "demo.json", DEMO_CONFIG.read_bytes())
    write("config", "minimal.json",
          '{"services": {"s": {"url": "http://127.0.0.1:9101"}},'
          ' "routes": [{"path": "/x", "calls":'
          ' [{"name": "a", "service": "s", "path": "/a"}]}]}')
    write("config", "full.json", """{
  "listen": "[::1]:8080",
  "admin": {"listen": "127.0.0.1:9090"},
  "resolver": {"servers": ["127.0.0.1:53"], "timeout_ms": 500, "tries": 2},
  "trusted_proxies": ["10.0.0.0/8", "::1"],
  "secret_headers": ["X-Api-Key"],
  "defaults": {"timeout_ms": 400, "max_connections": 8,
               "forward_headers": ["accept-language"],
               "set_headers": {"X-Lang": "{query.lang}"}},
  "services": {
    "users": {"url": "h2c://users.test:9201", "ping_interval_ms": 0},
    "shop": {"url": "srv+http://_http._tcp.shop.test",
             "max_concurrent_calls": 100},
    "pay": {"url": "https://pay.test", "tls_verify": false}
  },
  "routes": [
    {"method": "POST", "path": "/orders/{user}/{order}", "deadline_ms": 900,
     "calls": [
       {"name": "order", "service": "shop", "method": "POST",
        "path": "/o/{order}?u={user}", "forward_body": true},
       {"name": "pay", "service": "pay", "path": "/p/{order}",
        "required": false, "timeout_ms": 100}]}
  ]
}
""")
    write("config", "bad-unknown-param.json",
          '{"services": {"s": {"url": "http://h:1"}}, "routes": [{"path":'
          ' "/u/{user}", "calls": [{"name": "a", "service": "s",'
          ' "path": "/{usr}"}]}]}')
    write("config", "bad-types.json",
          '{"listen": 8080, "services": [], "routes": {"path": null}}')
    write("config", "bad-truncated.json", '{"services": {"s": {"url": "htt')
    write("config", "bad-url.json",
          '{"services": {"s": {"url": "ftp://h:99999"}}, "routes": []}')


# -- route ----------------------------------------------------------------

METHODS = ["GET", "POST", "HEAD", "PUT", "DELETE"]


def route_seed(name, method, target):
    write("route", name, bytes([METHODS.index(method)]) + target.encode())


def route_seeds():
    route_seed("dashboard", "GET", "/dashboard/alice?limit=10")
    route_seed("literal-wins", "GET", "/dashboard/admin")
    route_seed("escaped", "GET", "/dashboard/a%2Fb%20c?limit=%26x%3D1+2")
    route_seed("bad-escape", "GET", "/dashboard/%zz?limit=%4")
    route_seed("dot-segment", "GET", "/dashboard/..")
    route_seed("post-order", "POST", "/orders/bob/42?q=a%23b&q=second")
    route_seed("no-method", "DELETE", "/orders/bob/42")
    route_seed("deep", "GET", "/a/%C3%A9/b/%00/c?k=key&v=%0D%0Aset-cookie:x")
    route_seed("not-found", "GET", "//dashboard//alice/")


# -- aggregate ------------------------------------------------------------

def aggregate_seed(name, bodies, no_content=0):
    head = bytes([(len(bodies) - 1) | (no_content << 4)])
    data = head + b"\x1e".join(
        b if isinstance(b, bytes) else b.encode() for b in bodies)
    write("aggregate", name, data)


def aggregate_seeds():
    aggregate_seed("objects", ['{"id": 1, "name": "alice"}',
                               '[1, 2.5e3, -0, true, false, null]'])
    aggregate_seed("nested", ['{"a": [{"b": [[[{"c": {}}]]]}], "d": ""}',
                              '"scalar"', "  42  "])
    aggregate_seed("deep", ["[" * 100 + "]" * 100])
    aggregate_seed("nul-escapes", ['{"s": "a\\u0000b"}', '{"\\u0000": 1}'])
    aggregate_seed("big-numbers", ["123456789012345678901234567890",
                                   "1e308", "-1e309", "0.1e-400"])
    aggregate_seed("invalid-utf8", [b'"\xff\xfe"', b'"\xc3\xa9\xed\xa0\x80"',
                                    b'"\xf4\x90\x80\x80"'])
    aggregate_seed("surrogates", ['"\\ud83d\\ude00"', '"\\udc00"'])
    aggregate_seed("broken", ["{", '{"a" 1}', "[1,]", ""])
    aggregate_seed("no-content", ["", "not json"], no_content=0x1)


# -- h1 -------------------------------------------------------------------

def h1_seeds():
    plain = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
             b"Content-Length: 14\r\nKeep-Alive: timeout=5\r\n\r\n"
             b'{"id":"alice"}')
    write("h1", "content-length", with_cuts(plain, [10, 60]))
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
               b"Trailer: X-Checksum\r\n\r\n"
               b"5\r\n{\"a\":\r\n"
               b"3;ext=1\r\n12}\r\n"
               b"0\r\nX-Checksum: abc\r\n\r\n")
    write("h1", "chunked-trailers", with_cuts(chunked, [1, 40, 50, 70]))
    interim = (b"HTTP/1.1 100 Continue\r\n\r\n"
               b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
               b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}")
    write("h1", "interim", with_cuts(interim, []))
    write("h1", "no-content",
          with_cuts(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
                    []))
    write("h1", "head",
          with_cuts(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", [],
                    flag=0x08))
    write("h1", "until-close",
          with_cuts(b"HTTP/1.0 200 OK\r\n\r\n[1,2,3]", [5]))
    keep_alive = (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
    write("h1", "two-responses",
          with_cuts(keep_alive + keep_alive.replace(b"{}", b"[]"),
                    [len(keep_alive)]))
    write("h1", "too-large",
          with_cuts(b"HTTP/1.1 200 OK\r\nContent-Length: 99999\r\n\r\n{", []))
    write("h1", "bad-status", with_cuts(b"HTTP/1.1 2x0 OK\r\n\r\n", []))
    write("h1", "switching",
          with_cuts(b"HTTP/1.1 101 Switching Protocols\r\n"
                    b"Upgrade: h2c\r\n\r\n", []))


# -- h2 -------------------------------------------------------------------

DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = (
    0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x8)
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4


def frame(ftype, flags, stream, payload=b""):
    return (struct.pack(">I", len(payload))[1:] + bytes([ftype, flags])
            + struct.pack(">I", stream) + payload)


def hpack_int(value, prefix_bits, first_byte):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first_byte | value])
    out = bytearray([first_byte | limit])
    value -= limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def hpack(fields):
    """Literal header fields without indexing, new names, no Huffman."""
    out = b""
    for name, value in fields:
        out += b"\x00" + hpack_int(len(name), 7, 0) + name
        out += hpack_int(len(value), 7, 0) + value
    return out


def settings(*pairs):
    return frame(SETTINGS, 0, 0,
                 b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def response(status, body=b"", stream=1, extra=()):
    block = hpack([(b":status", status)] + list(extra))
    flags = END_HEADERS | (0 if body else END_STREAM)
    out = frame(HEADERS, flags, stream, block)
    if body:
        out += frame(DATA, END_STREAM, stream, body)
    return out


def h2_seed(name, frames, flag=0):
    """Write |frames| with a cut after each of the first seven frames, so
    the client submits its request after the server's SETTINGS."""
    cuts, offset = [], 0
    for f in frames[:-1][:7]:
        offset += len(f)
        cuts.append(offset)
    write("h2", name, with_cuts(b"".join(frames), cuts, flag))


def h2_seeds():
    preface = settings((0x3, 100), (0x4, 65535))
    ack = frame(SETTINGS, ACK, 0)
    h2_seed("ok", [preface, ack,
                   response(b"200", b'{"id":"alice"}',
                            extra=[(b"content-type", b"application/json")])])
    h2_seed("post", [preface, ack, response(b"201", b"{}")], flag=0x08)
    h2_seed("no-content", [preface, ack, response(b"204")])
    h2_seed("interim", [preface, ack,
                        frame(HEADERS, END_HEADERS, 1, hpack([(b":status",
                                                               b"103")])),
                        response(b"200", b"[]")])
    trailers = frame(HEADERS, END_HEADERS | END_STREAM, 1,
                     hpack([(b"x-checksum", b"abc")]))
    h2_seed("trailers", [preface, ack,
                         frame(HEADERS, END_HEADERS, 1,
                               hpack([(b":status", b"200")])),
                         frame(DATA, 0, 1, b'{"a":'),
                         frame(DATA, 0, 1, b"1}"), trailers])
    h2_seed("refused", [preface, ack,
                        frame(RST_STREAM, 0, 1, struct.pack(">I", 0x7))])
    h2_seed("goaway", [preface,
                       frame(GOAWAY, 0, 0, struct.pack(">II", 0, 0x0))])
    h2_seed("goaway-error", [preface, ack,
                             frame(GOAWAY, 0, 0,
                                   struct.pack(">II", 1, 0x2) + b"debug")])
    h2_seed("ping-window", [preface, ack,
                            frame(PING, 0, 0, b"12345678"),
                            frame(WINDOW_UPDATE, 0, 0,
                                  struct.pack(">I", 1000)),
                            response(b"500", b'{"e":1}')])
    h2_seed("too-large", [preface, ack,
                          frame(HEADERS, END_HEADERS, 1,
                                hpack([(b":status", b"200")])),
                          frame(DATA, END_STREAM, 1, b"x" * 5000)])
    h2_seed("no-settings", [response(b"200", b"{}")])


def main():
    config_seeds()
    route_seeds()
    aggregate_seeds()
    h1_seeds()
    h2_seeds()


if __name__ == "__main__":
    main()
