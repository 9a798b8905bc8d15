#!/usr/bin/env python3
"""A small SMTP server with TLS from Python's ssl module, for loadgen's tests.

    tls-smtp-server.py MODE CERT KEY LOG

MODE: starttls (offers STARTTLS), implicit (TLS from the first byte), or
inject (offers STARTTLS, then sends a second reply right behind its 220 in
the same write: the plaintext injection a client must not read inside TLS).
Binds 127.0.0.1 port 0 and prints the port on stdout. Appends one line per
accepted message to LOG: the TLS version and cipher it arrived under, or
"plain". Stops when stdin closes.
"""

import socket
import ssl
import sys
import threading

MODE, CERT, KEY, LOG = sys.argv[1:5]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(CERT, KEY)
log_lock = threading.Lock()


def session(sock):
    tls = MODE == "implicit"
    if tls:
        sock = ctx.wrap_socket(sock, server_side=True)
    f = sock.makefile("rb")
    sock.sendall(b"220 py.test ESMTP\r\n")
    queued = 0
    while True:
        line = f.readline()
        if not line:
            return
        verb = line[:4].upper()
        if verb == b"EHLO":
            caps = [b"py.test", b"PIPELINING"] + ([] if tls else [b"STARTTLS"])
            sock.sendall(b"".join(b"250-" + c + b"\r\n" for c in caps[:-1]) + b"250 " + caps[-1] + b"\r\n")
        elif verb == b"STAR" and not tls:
            if MODE == "inject":
                sock.sendall(b"220 2.0.0 Ready\r\n250 2.0.0 injected\r\n")
            else:
                sock.sendall(b"220 2.0.0 Ready\r\n")
            sock = ctx.wrap_socket(sock, server_side=True)
            f = sock.makefile("rb")
            tls = True
        elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
            sock.sendall(b"250 2.0.0 Ok\r\n")
        elif verb == b"DATA":
            sock.sendall(b"354 go ahead\r\n")
            while f.readline() not in (b".\r\n", b""):
                pass
            queued += 1
            how = "%s %s" % (sock.version(), sock.cipher()[0]) if tls else "plain"
            with log_lock, open(LOG, "a") as out:
                out.write(how + "\n")
            sock.sendall(b"250 2.0.0 Ok: queued as PY%d\r\n" % queued)
        elif verb == b"QUIT":
            sock.sendall(b"221 2.0.0 Bye\r\n")
            return
        else:
            sock.sendall(b"502 5.5.2 not here\r\n")


def serve(conn):
    try:
        session(conn)
    except (OSError, ssl.SSLError):
        pass  # a client that gave up (e.g. it did not trust the certificate)
    finally:
        conn.close()


def main():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    print(srv.getsockname()[1], flush=True)

    def accept():
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    sys.stdin.read()


main()
