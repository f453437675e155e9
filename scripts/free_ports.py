#!/usr/bin/env python3
"""Print N distinct loopback TCP ports that bind now, space-separated: `free_ports.py [N]`.

Why not bind(("127.0.0.1", 0)) and close: that port is in the kernel's ephemeral range
(32768-60999 by default), and until the server we hand it to binds it, any outgoing connection
on the machine may take it as its source port; the server then fails with "Address already in
use". These come from 20000-31999, below that range, starting at an offset derived from the
pid so concurrent callers begin apart (the same scheme as the Rust tests' free_port(), in
cloud/tests/support/ports.rs). Ask for every port a
script needs in one call: two calls may return the same free port.
"""
import os
import socket
import sys

FIRST, COUNT = 20000, 12000


def main() -> int:
    want = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    if want < 1:
        print("usage: free_ports.py [N >= 1]", file=sys.stderr)
        return 2
    offset, picked = os.getpid() * 7919 % COUNT, []
    for n in range(COUNT):
        port = FIRST + (offset + n) % COUNT
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        picked.append(port)
        if len(picked) == want:
            print(*picked)
            return 0
    print(f"free_ports.py: fewer than {want} free ports in {FIRST}-{FIRST + COUNT - 1}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
