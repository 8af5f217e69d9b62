"""A process's file descriptors, sockets and memory, from /proc (Linux only).

fd_snapshot(pid) sorts every open fd of pgring into
  listeners  sockets it listens on (TCP LISTEN, unix sockets accepting connections)
  clients    connections accepted on one of those: a client (or a /metrics scraper)
  servers    connections pgring opened itself: server connections (to PostgreSQL, a relay, ...)
  other      everything else: io_uring, eventfd, signalfd, pipes, files, other sockets
which is what the leak check of the Pgring fixture compares."""

import collections
import os
import socket
import struct

from .checks import fail, wait_until

__all__ = ["tcp_timers", "fd_count", "rss_kib", "describe_fds", "wait_fds_at_most", "fd_snapshot",
           "FdSnapshot", "TcpSocket", "TCP_STATES", "ports_connected_to"]

TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
              6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN",
              11: "CLOSING", 12: "NEW_SYN_RECV"}
_UNIX_LISTENING = 0x10000  # __SO_ACCEPTCON in /proc/net/unix's Flags
_UNIX_CONNECTED = 3        # SS_CONNECTED in /proc/net/unix's St


def fd_count(pid):
    """Open file descriptors of process `pid`."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid):
    """Resident set size (VmRSS) of process `pid` in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    fail(f"no VmRSS in /proc/{pid}/status")


def _fd_targets(pid):
    """{fd number: readlink target} of `pid`'s open fds (fds closed meanwhile are left out)."""
    targets = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
    return targets


def describe_fds(pid):
    """A short summary of what the fds of `pid` are (socket/pipe/anon_inode/file counts)."""
    kinds = {}
    for target in _fd_targets(pid).values():
        kind = target.split(":", 1)[0] if ":" in target else "file"
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def wait_fds_at_most(pid, limit, timeout=15, what="pgring's open files"):
    """Wait until the process has at most `limit` open fds; return the count."""
    last = [None]

    def ok():
        last[0] = fd_count(pid)
        return last[0] <= limit

    try:
        wait_until(ok, timeout, interval=0.2, what=what)
    except AssertionError:
        fail(f"{what}: {last[0]} open fds after {timeout}s, expected at most {limit}: "
             f"{describe_fds(pid)}")
    return last[0]


# ---------------------------------------------------------------------------------------------
# Sockets

TcpSocket = collections.namedtuple("TcpSocket", "fd local_addr local_port remote_addr "
                                                "remote_port state")
TcpSocket.__str__ = lambda s: (f"fd {s.fd} {s.local_addr}:{s.local_port} -> "
                               f"{s.remote_addr}:{s.remote_port} {s.state}")


def _hex_addr(text):
    """'0100007F:1F90' (or the 32-digit IPv6 form) -> ('127.0.0.1', 8080)."""
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        addr = socket.inet_ntop(socket.AF_INET, struct.pack("<I", struct.unpack(">I", raw)[0]))
    else:  # four host-order 32-bit words
        words = struct.unpack(">4I", raw)
        addr = socket.inet_ntop(socket.AF_INET6, struct.pack("<4I", *words))
        if addr.startswith("::ffff:"):
            addr = addr[len("::ffff:"):]
    return addr, int(port, 16)


def _tcp_rows(pid):
    """The fields of each socket line of /proc/PID/net/tcp and tcp6 (the process's netns)."""
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{name}") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) >= 10:
                yield fields


def _tcp_table(pid):
    """{inode: (local (addr, port), remote (addr, port), state name)} of the process's netns."""
    table = {}
    for fields in _tcp_rows(pid):
        inode = int(fields[9])
        if inode != 0:
            table[inode] = (_hex_addr(fields[1]), _hex_addr(fields[2]),
                            TCP_STATES.get(int(fields[3], 16), fields[3]))
    return table


def _unix_table(pid):
    """{inode: (listening, connected, path or '')}."""
    table = {}
    try:
        with open(f"/proc/{pid}/net/unix") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return table
    for line in lines:
        fields = line.split()
        if len(fields) < 7:
            continue
        flags, st, inode = int(fields[3], 16), int(fields[5], 16), int(fields[6])
        path = fields[7] if len(fields) > 7 else ""
        table[inode] = (bool(flags & _UNIX_LISTENING), st == _UNIX_CONNECTED, path)
    return table


def tcp_timers(pid="self"):
    """{(local (addr, port), remote (addr, port)): (timer, seconds)} of the network namespace of
    `pid`: the kernel's pending timer of each TCP socket (/proc/net/tcp "tr:tm->when": 0 none,
    1 retransmit, 2 keepalive, 3 TIME_WAIT, 4 zero-window probe) and when it fires."""
    hz = os.sysconf("SC_CLK_TCK")  # USER_HZ: the unit /proc reports jiffies in
    timers = {}
    for fields in _tcp_rows(pid):
        timer, when = fields[5].split(":")
        timers[(_hex_addr(fields[1]), _hex_addr(fields[2]))] = (int(timer, 16), int(when, 16) / hz)
    return timers


def ports_connected_to(port, pid="self"):
    """Local ports of every ESTABLISHED TCP connection to `port` in the network namespace of
    `pid` (any process): the client ports of the live connections to a server."""
    return {local[1] for local, remote, state in _tcp_table(pid).values()
            if remote[1] == port and state == "ESTABLISHED"}


class FdSnapshot:
    """pgring's fds at one moment, sorted as the module docstring says."""

    def __init__(self, pid):
        self.pid = pid
        targets = _fd_targets(pid)
        tcp, unix = _tcp_table(pid), _unix_table(pid)
        self.listeners, self.clients, self.servers, self.other = [], [], [], []
        connected_tcp, connected_unix = [], []
        listen_ports, listen_paths = set(), set()
        for fd, target in sorted(targets.items()):
            inode = None
            if target.startswith("socket:["):
                inode = int(target[len("socket:["):-1])
            if inode in tcp:
                (laddr, lport), (raddr, rport), state = tcp[inode]
                s = TcpSocket(fd, laddr, lport, raddr, rport, state)
                if state == "LISTEN":
                    self.listeners.append(str(s))
                    listen_ports.add(lport)
                else:
                    connected_tcp.append(s)
            elif inode in unix:
                listening, connected, path = unix[inode]
                if listening:
                    self.listeners.append(f"fd {fd} unix {path}")
                    listen_paths.add(path)
                elif connected:
                    connected_unix.append((fd, path))
                else:
                    self.other.append(f"fd {fd} unix socket {path}".rstrip())
            else:
                self.other.append(f"fd {fd} {target}")
        for s in connected_tcp:
            (self.clients if s.local_port in listen_ports else self.servers).append(s)
        for fd, path in connected_unix:
            if path in listen_paths:
                self.clients.append(f"fd {fd} unix client on {path}")
            elif path:
                self.other.append(f"fd {fd} unix socket {path}")
            else:  # the connecting side of a unix socket has no name: a server connection
                self.servers.append(f"fd {fd} unix server connection")

    def baseline_count(self):
        """The fds that are neither client nor server connections."""
        return len(self.listeners) + len(self.other)

    def __str__(self):
        return (f"{len(self.listeners)} listeners, {len(self.clients)} clients "
                f"{[str(c) for c in self.clients]}, {len(self.servers)} server connections "
                f"{[str(s) for s in self.servers]}, {len(self.other)} other fds {self.other}")


def fd_snapshot(pid):
    return FdSnapshot(pid)
