#!/usr/bin/env python3
"""A logging HTTP relay for scripts/undermoon-interop.sh: listen LISTEN_PORT, forward to UPSTREAM (host:port), log each exchange.

usage: logproxy.py LISTEN_PORT UPSTREAM_HOST:PORT LOGFILE
Each line: time method path reqbody -> status respbody (bodies truncated to 1500 chars).
"""
import http.client
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LISTEN = int(sys.argv[1])
UP_HOST, UP_PORT = sys.argv[2].rsplit(":", 1)
LOG = open(sys.argv[3], "a", buffering=1)
LOCK = threading.Lock()
HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length"}


def short(b: bytes) -> str:
    s = b.decode("utf-8", "replace")
    return s if len(s) <= 1500 else s[:1500] + "...(%d bytes)" % len(b)


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def relay(self):
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n) if n else b""
        hdrs = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        t0 = time.time()
        try:
            c = http.client.HTTPConnection(UP_HOST, int(UP_PORT), timeout=330)
            c.request(self.command, self.path, body=body or None, headers=hdrs)
            r = c.getresponse()
            data = r.read()
            status = r.status
            rh = [(k, v) for k, v in r.getheaders() if k.lower() not in HOP]
            c.close()
        except Exception as e:  # upstream down
            data = ('{"relay_error":"%s"}' % e).encode()
            status = 502
            rh = [("content-type", "application/json")]
        dt = (time.time() - t0) * 1000
        with LOCK:
            LOG.write("%s %s %s %s -> %d %.0fms %s\n" % (
                time.strftime("%H:%M:%S"), self.command, self.path,
                short(body) if body else "-", status, dt, short(data)))
        self.send_response(status)
        for k, v in rh:
            self.send_header(k, v)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = relay


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", LISTEN), H).serve_forever()
