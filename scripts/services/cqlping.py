#!/usr/bin/env python3
"""Checks that a CQL server answers real queries, with the Python standard library only.

    cqlping.py [HOST] [PORT]

Speaks native protocol v4: OPTIONS (expects SUPPORTED), STARTUP (expects READY, i.e. no
authentication), then QUERY "SELECT release_version FROM system.local" and prints the
release version. Exit 0 on success, 1 otherwise (the reason on stderr).
"""

import socket
import struct
import sys

VERSION = 0x04
OP_ERROR, OP_STARTUP, OP_READY, OP_AUTHENTICATE = 0x00, 0x01, 0x02, 0x03
OP_OPTIONS, OP_SUPPORTED, OP_QUERY, OP_RESULT = 0x05, 0x06, 0x07, 0x08
RESULT_ROWS = 0x0002
CONSISTENCY_ONE = 0x0001


def frame(stream, opcode, body=b""):
    return struct.pack(">BBhBi", VERSION, 0, stream, opcode, len(body)) + body


def read_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by the server")
        buf += chunk
    return buf


def exchange(sock, stream, opcode, body=b""):
    sock.sendall(frame(stream, opcode, body))
    version, _flags, rstream, ropcode, length = struct.unpack(">BBhBi", read_exact(sock, 9))
    payload = read_exact(sock, length)
    if version & 0x7F != VERSION or rstream != stream:
        raise ValueError(f"unexpected frame header version={version:#x} stream={rstream}")
    if ropcode == OP_ERROR:
        code = struct.unpack(">i", payload[:4])[0]
        msg_len = struct.unpack(">H", payload[4:6])[0]
        raise RuntimeError(f"server error {code:#06x}: {payload[6:6 + msg_len].decode(errors='replace')}")
    return ropcode, payload


def string(s):
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def long_string(s):
    b = s.encode()
    return struct.pack(">i", len(b)) + b


class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, n):
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def short(self):
        return struct.unpack(">H", self.take(2))[0]

    def int(self):
        return struct.unpack(">i", self.take(4))[0]

    def string(self):
        return self.take(self.short()).decode()

    def bytes(self):
        n = self.int()
        return None if n < 0 else self.take(n)

    def option(self):
        kind = self.short()
        if kind == 0x0000:  # custom: a class name follows
            self.string()
        elif kind in (0x0020, 0x0022):  # list, set
            self.option()
        elif kind == 0x0021:  # map
            self.option()
            self.option()
        elif kind in (0x0030, 0x0031):  # udt, tuple: not expected for this query
            raise ValueError("unexpected column type")
        return kind


def first_value(payload):
    r = Reader(payload)
    if r.int() != RESULT_ROWS:
        raise ValueError("the query did not return rows")
    flags, columns = r.int(), r.int()
    if flags & 0x0002:  # has_more_pages: paging state
        r.bytes()
    if flags & 0x0004:  # no_metadata
        raise ValueError("no metadata in the result")
    if flags & 0x0001:  # global_tables_spec
        r.string()
        r.string()
    for _ in range(columns):
        if not flags & 0x0001:
            r.string()
            r.string()
        r.string()
        r.option()
    if r.int() < 1:
        raise ValueError("system.local returned no row")
    value = r.bytes()
    return None if value is None else value.decode()


def main():
    host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 9042
    try:
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.settimeout(10)
            op, _ = exchange(sock, 1, OP_OPTIONS)
            if op != OP_SUPPORTED:
                raise ValueError(f"OPTIONS answered with opcode {op:#x}, not SUPPORTED")
            body = struct.pack(">H", 1) + string("CQL_VERSION") + string("3.0.0")
            op, _ = exchange(sock, 2, OP_STARTUP, body)
            if op == OP_AUTHENTICATE:
                raise ValueError("the server asks for authentication")
            if op != OP_READY:
                raise ValueError(f"STARTUP answered with opcode {op:#x}, not READY")
            query = long_string("SELECT release_version FROM system.local")
            op, payload = exchange(sock, 3, OP_QUERY, query + struct.pack(">HB", CONSISTENCY_ONE, 0))
            if op != OP_RESULT:
                raise ValueError(f"QUERY answered with opcode {op:#x}, not RESULT")
            print(first_value(payload))
            return 0
    except (OSError, ValueError, RuntimeError, struct.error) as e:
        print(f"cqlping {host}:{port}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
