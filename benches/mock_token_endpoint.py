#!/usr/bin/env python3
"""A mock Microsoft Entra token endpoint on loopback, for benches/run.sh.

It responds to every POST to /<tenant>/oauth2/v2.0/token with a new unsigned JWT whose
`oid` is the test user and which expires after --lifetime seconds. With --tls-cert and
--tls-key it serves HTTPS, for clients such as azure_identity 0.31 that reject an http
authority host. It binds 127.0.0.1 only, prints `port N` once it listens, and serves
until it is killed. With --log, it appends the Unix time in nanoseconds of each token
response, after the response is written.
"""

import argparse
import base64
import json
import socket
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

OID = "11111111-2222-3333-4444-555555555555"
TENANT = "00000000-0000-0000-0000-0000000000aa"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Issuer:
    def __init__(self, lifetime: int, log_path: str | None):
        self.lifetime = lifetime
        self.log_path = log_path
        self.serial = 0
        self.lock = threading.Lock()

    def token_body(self) -> bytes:
        with self.lock:
            self.serial += 1
            serial = self.serial
        now = int(time.time())
        claims = {
            "aud": "https://redis.azure.com",
            "exp": now + self.lifetime,
            "iat": now,
            "oid": OID,
            "tid": TENANT,
            "uti": str(serial),
        }
        header = b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
        token = f"{header}.{b64url(json.dumps(claims).encode())}.c2ln"
        body = {
            "token_type": "Bearer",
            "expires_in": self.lifetime,
            "ext_expires_in": self.lifetime,
            "access_token": token,
        }
        return json.dumps(body).encode()

    def record(self) -> None:
        if self.log_path:
            with self.lock, open(self.log_path, "a") as log:
                log.write(f"{time.time_ns()}\n")


def handler_for(issuer: Issuer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self):
            super().setup()
            # Headers and body go out in two writes. Without this, Nagle's algorithm
            # delays the body until the client's delayed ACK, about 40 ms on Linux.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_POST(self):
            length = int(self.headers.get("content-length") or 0)
            self.rfile.read(length)
            if self.path.split("?")[0] == f"/{TENANT}/oauth2/v2.0/token":
                status, body = 200, issuer.token_body()
            else:
                status, body = 404, b'{"error":"not_found"}'
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            if status == 200:
                issuer.record()

        def log_message(self, format, *args):
            pass

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lifetime", type=int, default=3600, help="token lifetime, seconds")
    parser.add_argument("--tls-cert", help="PEM certificate for HTTPS")
    parser.add_argument("--tls-key", help="PEM private key for HTTPS")
    parser.add_argument("--log", help="file to append each token response time to")
    args = parser.parse_args()

    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(Issuer(args.lifetime, args.log)))
    server.daemon_threads = True
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"port {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
