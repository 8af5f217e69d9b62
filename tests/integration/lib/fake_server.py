#!/usr/bin/python3
"""A scripted fake PostgreSQL for what a real one cannot be made to do: stall in the middle of
a message. It implements just enough of the protocol: SSLRequest/GSSENCRequest are refused
('N'); any StartupMessage is accepted with trust (AuthenticationOk, a few ParameterStatus,
BackendKeyData, ReadyForQuery 'I'). A simple Query containing the word `stall` gets a
RowDescription and then only the first half of a DataRow (or all of it but its last
`stall_missing` bytes), and the connection stalls forever
(it is still read, and anything it sends is recorded, but never answered). Any other Query
is answered: SET/RESET/DISCARD/BEGIN/COMMIT/ROLLBACK with their command tag, anything else with
one row holding the text `ok`. Extended-protocol Syncs get ReadyForQuery. CancelRequests are
recorded and ignored (a server too stuck to cancel).

    with FakeServer() as fake:         # in-process, threads
        ... databases: {fake: {host: 127.0.0.1, port: fake.port}} ...
        fake.stalled  -> how many connections are stalled right now
        fake.closed   -> how many server sessions ended (pgring closed or terminated them)

Run as a program (python3 tests/integration/lib/fake_server.py PORT) it serves until killed."""

import socket
import struct
import sys
import threading

SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

PARAMETERS = {
    "server_version": "15.0 (pgring fake)",
    "server_encoding": "UTF8",
    "client_encoding": "UTF8",
    "DateStyle": "ISO, MDY",
    "TimeZone": "UTC",
    "IntervalStyle": "postgres",
    "integer_datetimes": "on",
    "standard_conforming_strings": "on",
    "application_name": "",
    "is_superuser": "on",
    "session_authorization": "postgres",
}


def msg(kind, body=b""):
    return kind + struct.pack("!I", len(body) + 4) + body


def ready(status=b"I"):
    return msg(b"Z", status)


def row_description(name="col"):
    # one text column: name, table oid 0, attnum 0, type oid 25 (text), typlen -1, typmod -1,
    # format 0
    return msg(b"T", struct.pack("!H", 1) + name.encode() + b"\0"
               + struct.pack("!IhIhih", 0, 0, 25, -1, -1, 0))


def data_row(value):
    data = value.encode()
    return msg(b"D", struct.pack("!H", 1) + struct.pack("!i", len(data)) + data)


def command_complete(tag):
    return msg(b"C", tag.encode() + b"\0")


class FakeServer:
    def __init__(self, host="127.0.0.1", port=0, stall_value_size=4000, stall_missing=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.stall_value_size = stall_value_size
        # How many bytes of the DataRow are withheld when stalling (default: half of it).
        self.stall_missing = stall_missing
        self.lock = threading.Lock()
        self.connections = 0      # sessions that completed the startup
        self.cancels = 0          # CancelRequests received
        self.stalled = 0          # sessions stalled mid-message right now
        self.stalls = 0           # sessions that ever stalled
        self.closed = 0           # sessions that ended (the peer closed or terminated them)
        self.queries = []         # every simple Query text received
        self._next_pid = 70000
        self._stop = False
        self._conns = []
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)

    # -- lifecycle

    def start(self):
        self._thread.start()
        return self

    def close(self):
        self._stop = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        with self.lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.close()
            except OSError:
                pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
        return False

    def stalled_row(self):
        """The DataRow a stalled query starts to send (a prefix of it is all that is sent)."""
        return data_row("x" * self.stall_value_size)

    # -- serving

    def _accept_loop(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _recv_exact(conn, n):
        buf = b""
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def _serve(self, conn):
        stalled = False
        session = False
        try:
            while True:  # startup phase: SSL/GSS requests, then the startup packet
                (length,) = struct.unpack("!I", self._recv_exact(conn, 4))
                body = self._recv_exact(conn, length - 4)
                (code,) = struct.unpack("!I", body[:4])
                if code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE):
                    conn.sendall(b"N")
                    continue
                if code == CANCEL_REQUEST_CODE:
                    with self.lock:
                        self.cancels += 1
                    return  # ignored: the stalled session goes on stalling
                break
            session = True
            with self.lock:
                self.connections += 1
                self._next_pid += 1
                pid = self._next_pid
            out = msg(b"R", struct.pack("!I", 0))
            for k, v in PARAMETERS.items():
                out += msg(b"S", k.encode() + b"\0" + v.encode() + b"\0")
            out += msg(b"K", struct.pack("!II", pid, 12345))
            out += ready()
            conn.sendall(out)
            status = b"I"
            while True:
                kind = self._recv_exact(conn, 1)
                (length,) = struct.unpack("!I", self._recv_exact(conn, 4))
                body = self._recv_exact(conn, length - 4)
                if stalled:
                    continue  # read and ignore everything from now on
                if kind == b"X":
                    return
                if kind == b"S":  # Sync
                    conn.sendall(ready(status))
                    continue
                if kind != b"Q":
                    continue  # other extended-protocol messages: no answer until Sync
                sql = body.rstrip(b"\0").decode("utf-8", "replace")
                with self.lock:
                    self.queries.append(sql)
                if "stall" in sql:
                    row = self.stalled_row()
                    missing = (self.stall_missing if self.stall_missing is not None
                               else len(row) // 2)
                    conn.sendall(row_description() + row[:len(row) - missing])
                    stalled = True
                    with self.lock:
                        self.stalled += 1
                        self.stalls += 1
                    continue
                word = sql.strip().split(None, 1)[0].upper() if sql.strip() else ""
                if word in ("SET", "RESET", "DISCARD", "BEGIN", "COMMIT", "ROLLBACK",
                            "DEALLOCATE", "CLOSE", "UNLISTEN"):
                    tag = {"BEGIN": "BEGIN", "COMMIT": "COMMIT", "ROLLBACK": "ROLLBACK"}.get(
                        word, word if word != "DISCARD" else "DISCARD ALL")
                    status = {"BEGIN": b"T", "COMMIT": b"I", "ROLLBACK": b"I"}.get(word, status)
                    conn.sendall(command_complete(tag) + ready(status))
                elif word == "":
                    conn.sendall(msg(b"I") + ready(status))
                else:
                    conn.sendall(row_description() + data_row("ok") + command_complete("SELECT 1")
                                 + ready(status))
        except (EOFError, OSError):
            pass
        finally:
            with self.lock:
                if stalled:
                    self.stalled -= 1
                if session:
                    self.closed += 1
            try:
                conn.close()
            except OSError:
                pass
            with self.lock:
                if conn in self._conns:
                    self._conns.remove(conn)


if __name__ == "__main__":
    server = FakeServer(port=int(sys.argv[1]) if len(sys.argv) > 1 else 0).start()
    print(f"fake PostgreSQL listening on 127.0.0.1:{server.port}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.close()
