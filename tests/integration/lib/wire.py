"""A minimal wire-protocol client: exact control over the bytes sent, and the SQLSTATEs of
errors raised during connection startup (libpq, and so psql and psycopg2, report only the
message text for those). RawConn/login do trust, cleartext, MD5 and SCRAM-SHA-256 themselves,
so tests can see exactly which authentication request pgring sent. Also: frontend message
builders for the extended protocol, and readers for what pgring sends before it closes a
connection."""

import base64
import hashlib
import hmac
import secrets
import socket
import struct
import threading
import time

from .checks import check, check_eq, fail

__all__ = ["PROTOCOL_3_0", "PROTOCOL_3_2", "SSL_REQUEST_CODE", "GSSENC_REQUEST_CODE", "CANCEL_REQUEST_CODE",
           "PgError", "ConnectionClosed", "Scram", "parse_fields", "startup_packet", "message",
           "RawConn",
           "login", "login_error", "parse_message", "bind_message", "describe_message",
           "execute_message", "close_message", "SYNC_MESSAGE", "FLUSH_MESSAGE",
           "data_row_values", "read_messages_until", "read_until_ready", "error_fields_in",
           "send_query_collect", "read_close", "expect_closed_with", "still_open",
           "NOT_A_REPLY", "step_replies", "q", "bind_exec", "steps_while_busy"]


PROTOCOL_3_0 = 196608
PROTOCOL_3_2 = 196610  # PostgreSQL 18: a cancel secret of 4..256 bytes
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102


class PgError(Exception):
    """An ErrorResponse: .fields maps field codes to values ('C' SQLSTATE, 'M' message, ...)."""

    def __init__(self, fields):
        self.fields = fields
        self.sqlstate = fields.get("C")
        self.pgcode = self.sqlstate
        super().__init__(f"{fields.get('S', 'ERROR')} {self.sqlstate}: {fields.get('M', '')}")


class ConnectionClosed(Exception):
    """The peer closed the connection (EOF or reset) before the expected message."""


def parse_fields(body):
    """ErrorResponse/NoticeResponse body -> {code: value}."""
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


def startup_packet(user, database, protocol=PROTOCOL_3_0, **params):
    body = struct.pack("!I", protocol)
    items = {"user": user, "database": database, **params}
    for k, v in items.items():
        if v is not None:
            body += k.encode() + b"\0" + str(v).encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def message(kind, body=b""):
    """A regular protocol message: type byte, int32 length, body."""
    return kind + struct.pack("!I", len(body) + 4) + body


class RawConn:
    """A raw socket to pgring (or PostgreSQL) with helpers to read whole messages.

        c = RawConn(port)            # just the TCP connection
        c.send(bytes); c.read_message() -> (type, body); c.read_until_close() -> [(type, body)]
    """

    def __init__(self, port, host="127.0.0.1", timeout=10.0, source=None):
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.sock.settimeout(timeout)
        self.buf = b""
        self.auth_requests = []   # authentication request codes seen (0 ok, 3, 5, 10, ...)
        self.parameters = {}
        self.backend_key = None
        self.notices = []
        self.negotiated = None    # NegotiateProtocolVersion: (version, [unsupported options])

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, n):
        while len(self.buf) < n:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError as e:
                raise ConnectionClosed(f"connection reset ({e})") from e
            if not chunk:
                raise ConnectionClosed(f"connection closed by peer ({len(self.buf)} bytes "
                                       f"buffered, wanted {n})")
            self.buf += chunk

    def read_byte(self):
        """One byte (the answer to SSLRequest / GSSENCRequest)."""
        self._fill(1)
        b, self.buf = self.buf[:1], self.buf[1:]
        return b

    def read_message(self):
        """(type byte, body) of the next message."""
        self._fill(5)
        kind = self.buf[:1]
        (length,) = struct.unpack("!I", self.buf[1:5])
        if length < 4 or length > (1 << 30):
            raise ConnectionClosed(f"bad message length {length} for type {kind!r}")
        self._fill(1 + length)
        body = self.buf[5:1 + length]
        self.buf = self.buf[1 + length:]
        return kind, body

    def read_until_close(self, max_messages=1000):
        """Every message until the peer closes the connection."""
        messages = []
        while len(messages) < max_messages:
            try:
                messages.append(self.read_message())
            except ConnectionClosed:
                return messages
        fail(f"peer did not close the connection after {max_messages} messages")

    def is_closed(self, timeout=5.0):
        """True if the peer closes the connection within `timeout` without sending more."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1)
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False
        return data == b""

    def ssl_request(self):
        """Send SSLRequest; return the one-byte answer (b'N' or b'S')."""
        self.send(struct.pack("!II", 8, SSL_REQUEST_CODE))
        return self.read_byte()

    def gssenc_request(self):
        self.send(struct.pack("!II", 8, GSSENC_REQUEST_CODE))
        return self.read_byte()

    def startup(self, user, database, password=None, protocol=PROTOCOL_3_0, **params):
        """Send a StartupMessage and complete authentication (trust, cleartext, MD5 or
        SCRAM-SHA-256) up to ReadyForQuery. Raises PgError on an ErrorResponse."""
        self.send(startup_packet(user, database, protocol=protocol, **params))
        scram = None
        while True:
            kind, body = self.read_message()
            if kind == b"E":
                raise PgError(parse_fields(body))
            if kind == b"R":
                (code,) = struct.unpack("!I", body[:4])
                self.auth_requests.append(code)
                if code == 0:
                    continue
                if password is None:
                    fail(f"server asked for authentication (request {code}) but no password "
                         f"was given")
                if code == 3:    # cleartext
                    self.send(message(b"p", password.encode() + b"\0"))
                elif code == 5:  # MD5, with a 4-byte salt
                    inner = hashlib.md5((password + user).encode()).hexdigest().encode()
                    outer = "md5" + hashlib.md5(inner + body[4:8]).hexdigest()
                    self.send(message(b"p", outer.encode() + b"\0"))
                elif code == 10:  # SASL: mechanism list
                    mechanisms = [m.decode() for m in body[4:].split(b"\0") if m]
                    check("SCRAM-SHA-256" in mechanisms, f"no SCRAM-SHA-256 in {mechanisms}")
                    scram = Scram(password)
                    first = scram.client_first().encode()
                    self.send(message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first))
                                      + first))
                elif code == 11:  # SASLContinue
                    check(scram is not None, "SASLContinue before SASL")
                    self.send(message(b"p", scram.client_final(body[4:].decode()).encode()))
                elif code == 12:  # SASLFinal
                    check(scram is not None, "SASLFinal before SASL")
                    scram.verify_server_final(body[4:].decode())
                else:
                    fail(f"unsupported authentication request {code}")
            elif kind == b"S":
                k, v, _ = body.split(b"\0", 2)
                self.parameters[k.decode()] = v.decode()
            elif kind == b"K":
                self.backend_key = body
            elif kind == b"v":
                version, n = struct.unpack("!II", body[:8])
                self.negotiated = (version, [o.decode() for o in body[8:].split(b"\0")[:n]])
            elif kind == b"N":
                self.notices.append(parse_fields(body))
            elif kind == b"Z":
                return self
            else:
                fail(f"unexpected message {kind!r} during startup")

    def simple_query(self, sql):
        """Send a simple Query; return the rows (lists of str/None) of all its results.
        Raises PgError (after reading up to ReadyForQuery) if the server reported an error."""
        self.send(message(b"Q", sql.encode() + b"\0"))
        rows, error = [], None
        while True:
            kind, body = self.read_message()
            if kind == b"D":
                rows.append(data_row_values(body))
            elif kind == b"E":
                error = PgError(parse_fields(body))
            elif kind == b"N":
                self.notices.append(parse_fields(body))
            elif kind == b"Z":
                if error is not None:
                    raise error
                return rows

    def terminate(self):
        try:
            self.send(message(b"X"))
        except OSError:
            pass
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class Scram:
    """Client side of SCRAM-SHA-256 (RFC 5802/7677) as PostgreSQL uses it. `gs2` is the header
    ("n,,", "y,," or "p=tls-server-end-point,,"); `cbind` the binding data that goes with "p"."""

    def __init__(self, password, gs2="n,,", cbind=b""):
        self.gs2 = gs2
        self.cbind = cbind
        self.password = password.encode()
        self.nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        self.first_bare = f"n=,r={self.nonce}"
        self.server_signature = None

    def client_first(self):
        return self.gs2 + self.first_bare

    def client_final(self, server_first):
        attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
        check(attrs["r"].startswith(self.nonce), "SCRAM server nonce does not extend ours")
        salt = base64.b64decode(attrs["s"])
        iterations = int(attrs["i"])
        salted = hashlib.pbkdf2_hmac("sha256", self.password, salt, iterations)
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        stored_key = hashlib.sha256(client_key).digest()
        binding = base64.b64encode(self.gs2.encode() + self.cbind).decode()
        without_proof = f"c={binding},r={attrs['r']}"
        auth_message = f"{self.first_bare},{server_first},{without_proof}".encode()
        client_signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, client_signature))
        server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
        self.server_signature = hmac.new(server_key, auth_message, hashlib.sha256).digest()
        return f"{without_proof},p={base64.b64encode(proof).decode()}"

    def verify_server_final(self, server_final):
        attrs = dict(kv.split("=", 1) for kv in server_final.split(","))
        check("v" in attrs, f"SCRAM server-final without verifier: {server_final!r}")
        check(base64.b64decode(attrs["v"]) == self.server_signature,
              "SCRAM server signature does not verify")


def login(port, user="postgres", db="pgring_test", password=None, host="127.0.0.1",
          timeout=10.0, source=None, **params):
    """Open a RawConn (from address `source`, if given) and log in; returns it ready for
    simple_query(). Raises PgError."""
    conn = RawConn(port, host=host, timeout=timeout, source=source)
    try:
        return conn.startup(user, db, password=password, **params)
    except BaseException:
        conn.close()
        raise


def login_error(port, user="postgres", db="pgring_test", password=None, **kwargs):
    """Log in expecting failure; return the PgError. Fails if the login succeeds."""
    try:
        conn = login(port, user=user, db=db, password=password, **kwargs)
    except PgError as e:
        return e
    conn.terminate()
    fail(f"login as {user!r} to {db!r} succeeded but should have failed")


# Extended-protocol messages for RawConn.send() (frontend side).

def parse_message(sql, name="", param_oids=()):
    body = name.encode() + b"\0" + sql.encode() + b"\0" + struct.pack("!H", len(param_oids))
    for oid in param_oids:
        body += struct.pack("!I", oid)
    return message(b"P", body)


def bind_message(params=(), portal="", statement=""):
    """Bind with text-format parameters (None is NULL) and text-format results."""
    body = portal.encode() + b"\0" + statement.encode() + b"\0"
    body += struct.pack("!H", 0)  # all parameters in text format
    body += struct.pack("!H", len(params))
    for p in params:
        if p is None:
            body += struct.pack("!i", -1)
        else:
            data = str(p).encode()
            body += struct.pack("!i", len(data)) + data
    body += struct.pack("!H", 0)  # all results in text format
    return message(b"B", body)


def describe_message(kind=b"P", name=""):
    return message(b"D", kind + name.encode() + b"\0")


def execute_message(portal="", max_rows=0):
    return message(b"E", portal.encode() + b"\0" + struct.pack("!I", max_rows))


def close_message(kind=b"S", name=""):
    return message(b"C", kind + name.encode() + b"\0")


SYNC_MESSAGE = message(b"S")
FLUSH_MESSAGE = message(b"H")


def data_row_values(body):
    """A DataRow body -> list of str/None."""
    (n,) = struct.unpack("!H", body[:2])
    pos, row = 2, []
    for _ in range(n):
        (ln,) = struct.unpack("!i", body[pos:pos + 4])
        pos += 4
        if ln < 0:
            row.append(None)
        else:
            row.append(body[pos:pos + ln].decode())
            pos += ln
    return row


def read_messages_until(conn, kinds, max_messages=100000):
    """Read messages from a RawConn up to and including the first whose type is in `kinds`
    (e.g. b"Z" or (b"s", b"C")); return them as a list of (type, body)."""
    out = []
    while len(out) < max_messages:
        kind, body = conn.read_message()
        out.append((kind, body))
        if kind in kinds:
            return out
    fail(f"no message of type {kinds!r} within {max_messages} messages")


def read_until_ready(conn):
    """Read up to ReadyForQuery; return (messages, transaction status 'I'/'T'/'E')."""
    msgs = read_messages_until(conn, (b"Z",))
    return msgs, msgs[-1][1][:1].decode()


def error_fields_in(messages):
    """The fields of every ErrorResponse among `messages`."""
    return [parse_fields(body) for kind, body in messages if kind == b"E"]


# Notices, ParameterStatus and notifications: not part of a reply (step_replies leaves them out).
NOT_A_REPLY = (b"N", b"S", b"A")


def step_replies(conn, data, replies, error_fields="CM"):
    """Send `data`; read `replies` answers (each up to ReadyForQuery). Returns a comparable
    summary of each: message kinds, the `error_fields` of errors (SQLSTATE and message unless
    told), rows, tags, status."""
    conn.send(data)
    out = []
    for _ in range(replies):
        msgs, status = read_until_ready(conn)
        msgs = [(k, b) for k, b in msgs if k not in NOT_A_REPLY]
        out.append({
            "kinds": "".join(k.decode() for k, _ in msgs),
            "errors": [tuple(f.get(c) for c in error_fields) for f in error_fields_in(msgs)],
            "rows": [data_row_values(b) for k, b in msgs if k == b"D"],
            "tags": [b.rstrip(b"\0").decode() for k, b in msgs if k == b"C"],
            "status": status,
        })
    return out


def q(sql):
    return message(b"Q", sql.encode() + b"\0")


def bind_exec(name, params=()):
    return bind_message(params, statement=name) + execute_message() + SYNC_MESSAGE


def steps_while_busy(port, user, db, hammer, run, expected, hammers=3):
    """Runs `run(conn)` on a fresh connection to `port` while `hammers` other clients keep the
    servers busy (`hammer(k, stop)` in a thread each, until the threading.Event `stop` is set,
    returning how many rounds it did): the steps land on one server, then another. Each of the
    (what, replies) pairs `run` returns must equal `expected`'s (PostgreSQL's, direct), and
    each hammer must have run."""
    stop = threading.Event()
    results = {}

    def catch(k):
        try:
            results[k] = hammer(k, stop)
        except Exception as e:  # noqa: BLE001 - reported below
            results[k] = f"{type(e).__name__}: {e}"

    threads = [threading.Thread(target=catch, args=(k,), daemon=True) for k in range(hammers)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.2)
        conn = login(port, user=user, db=db, timeout=30)
        got = run(conn)
        conn.terminate()
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    for (what, want), (_, have) in zip(expected, got):
        check_eq(have, want, f"step {what!r} through pgring vs. PostgreSQL")
    for k in range(hammers):
        check(isinstance(results.get(k), int) and results[k] > 0,
              f"hammer client {k}: {results.get(k)}")


def send_query_collect(conn, sql):
    """Send a simple Query on a RawConn; read up to ReadyForQuery or until the peer closes.
    Returns (messages, closed): closed is True when the connection ended before a
    ReadyForQuery (e.g. an error pgring sends before disconnecting)."""
    conn.send(message(b"Q", sql.encode() + b"\0"))
    msgs = []
    while True:
        try:
            kind, body = conn.read_message()
        except ConnectionClosed:
            return msgs, True
        msgs.append((kind, body))
        if kind == b"Z":
            return msgs, False


# Errors sent by pgring before it closes a connection

def read_close(conn, timeout=30.0):
    """Read from a RawConn until the peer closes it (or `timeout` passes: a failure).
    Returns (messages, error fields of each ErrorResponse)."""
    conn.sock.settimeout(timeout)
    msgs = []
    deadline = time.monotonic() + timeout
    while True:
        if time.monotonic() > deadline:
            fail(f"the connection was not closed within {timeout}s; got {[k for k, _ in msgs]}")
        try:
            kind, body = conn.read_message()
        except ConnectionClosed:
            break
        except socket.timeout:
            fail(f"the connection was not closed within {timeout}s; got {[k for k, _ in msgs]}")
        msgs.append((kind, body))
    return msgs, [parse_fields(b) for k, b in msgs if k == b"E"]


def expect_closed_with(conn, sqlstate, timeout=30.0, what="connection"):
    """The peer sends an ErrorResponse with `sqlstate` and closes; returns its fields."""
    msgs, errors = read_close(conn, timeout)
    check(errors, f"{what}: closed without an ErrorResponse (messages {[k for k, _ in msgs]})")
    check(errors[-1].get("C") == sqlstate,
          f"{what}: expected SQLSTATE {sqlstate}, got {errors[-1]}")
    return errors[-1]


def still_open(conn, seconds):
    """True if a RawConn receives nothing and stays open for `seconds`."""
    conn.sock.settimeout(seconds)
    try:
        conn.sock.recv(1, socket.MSG_PEEK)
    except socket.timeout:
        return True
    except OSError:
        return False
    return False  # EOF (b"") or a message arrived
