"""A small authoritative DNS server over UDP on loopback, for DNS clusters.

Answers A and AAAA questions from `records` (name -> list of IP strings,
IPv4 and IPv6 mixed); a name it does not know gets NXDOMAIN, a name given
to fail() gets that response code (2 = SERVFAIL) and no records, for one
question type or all. With
`hold` set, questions are kept unanswered until release(). It counts the
questions per (name, type) so that tests can wait for a resolution.
"""
import ipaddress
import select
import socket
import struct
import threading

TYPE_A, TYPE_AAAA = 1, 28
SERVFAIL, NXDOMAIN = 2, 3


def _read_name(msg, off):
    labels = []
    while True:
        n = msg[off]
        off += 1
        if n == 0:
            return ".".join(labels).lower(), off
        labels.append(msg[off:off + n].decode("ascii"))
        off += n


class DNSServer:
    def __init__(self, host="127.0.0.1", ttl=30):
        self.records = {}
        self.rcodes = {}
        self.ttl = ttl
        self.hold = False
        self.questions = {}
        self._held = []
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((host, 0))
        self.host, self.port = self._sock.getsockname()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def set(self, name, *ips):
        with self._lock:
            self.records[name.lower()] = list(ips)
            for key in [k for k in self.rcodes if k[0] == name.lower()]:
                del self.rcodes[key]

    def fail(self, name, rcode=SERVFAIL, qtype=None):
        with self._lock:
            self.rcodes[(name.lower(), qtype)] = rcode

    def count(self, name, qtype=None):
        with self._lock:
            return sum(n for (q, t), n in self.questions.items() if q == name.lower() and (qtype is None or t == qtype))

    def release(self):
        with self._lock:
            self.hold = False
            held, self._held = self._held, []
        for data, peer in held:
            self._answer(data, peer)

    def resolver(self):
        """The cluster's typed_dns_resolver_config pointing at this server."""
        return {"name": "envoy.network.dns_resolver.cares",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig",
                                 "resolvers": [{"socket_address": {"address": self.host, "port_value": self.port}}]}}

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()

    def _run(self):
        while not self._stop.is_set():
            ready, _, _ = select.select([self._sock], [], [], 0.05)
            if not ready:
                continue
            data, peer = self._sock.recvfrom(2048)
            try:
                name, off = _read_name(data, 12)
                qtype = struct.unpack(">H", data[off:off + 2])[0]
            except (IndexError, struct.error, UnicodeDecodeError):
                continue
            with self._lock:
                self.questions[(name, qtype)] = self.questions.get((name, qtype), 0) + 1
                if self.hold:
                    self._held.append((data, peer))
                    continue
            self._answer(data, peer)

    def _answer(self, data, peer):
        qid, _flags, qdcount = struct.unpack(">HHH", data[:6])
        if qdcount != 1:
            return
        name, off = _read_name(data, 12)
        qtype, _qclass = struct.unpack(">HH", data[off:off + 4])
        question = data[12:off + 4]
        with self._lock:
            rcode = self.rcodes.get((name, qtype), self.rcodes.get((name, None)))
            ips = self.records.get(name)
        answers = []
        if rcode is None and ips is None:
            rcode = NXDOMAIN
        for ip in ips or () if rcode is None else ():
            addr = ipaddress.ip_address(ip)
            if (qtype == TYPE_A) != (addr.version == 4) or qtype not in (TYPE_A, TYPE_AAAA):
                continue
            answers.append(struct.pack(">HHHIH", 0xC00C, qtype, 1, self.ttl, len(addr.packed)) + addr.packed)
        header = struct.pack(">HHHHHH", qid, 0x8180 | (rcode or 0), 1, len(answers), 0, 0)
        self._sock.sendto(header + question + b"".join(answers), peer)
