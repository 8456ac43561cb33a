"""The secure channel under every TCP connection, and the guard in front of every listener.

Handshake (fixed-size bytes; nothing is parsed before both proofs are checked)::

    server ─▶ client   MAGIC | ns (32 B) | server mode (1 B)
    client ─▶ server   MAGIC | nc (32 B) | client mode (1 B) | HMAC(secret, "client" | T)
    server ─▶ client   HMAC(secret, "server" | T)            (or DENY, 32 fixed bytes)

where T = MAGIC | ns | server mode | nc | client mode (the whole transcript).  The connection's
mode is the larger of the two: 0 plain (Unix sockets only, protected by a 0700 directory),
1 integrity (every record carries an AES-GMAC tag), 2 encrypted and authenticated
(AES-256-GCM, the default on TCP).  Then each direction has its own key,
HKDF-SHA256(secret, salt=T, info="luminary3 c2s"/"s2c" | mode), so a relay that forwarded
the handshake holds no key, and its own frames fail the first tag check.

Records (below the msgpack framing, which is unchanged)::

    length (4 B, big endian, 1..RECORD_MAX) | body (encrypted or plain) | tag (16 B)

The nonce is the direction's record counter (96 bits, never reused: the keys are fresh per
connection), so a record that is replayed, dropped, reordered, altered or injected fails its tag
and the connection is closed (that connection only).  In integrity mode the tag is a GMAC over
the body; the length needs no separate tag: a changed length makes the receiver check a
different span, which fails.
"""
from __future__ import annotations

import collections
import hashlib
import hmac
import logging
import os
import struct

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

MAGIC = b"LUM3"          # bump when the wire format changes: peers of other versions are refused
DENY = b"LUMINARY-DENY-WRONG-SECRET-" + b"\0" * 5    # 32 fixed bytes: tells an honest peer why
NONCE = 32
MAC = 32
SERVER_HELLO = 4 + NONCE + 1
CLIENT_HELLO = 4 + NONCE + 1 + MAC
PLAIN, INTEGRITY, ENCRYPTED = 0, 1, 2
MODES = (PLAIN, INTEGRITY, ENCRYPTED)
HDR, TAG = 4, 16
RECORD_MAX = 256 << 10   # largest record body: bounds what is buffered before a tag is checked
BIG = 64 << 10           # buffers at least this large are sealed on their own (RAW payloads)
_LEN = struct.Struct(">I")

HANDSHAKE_TIMEOUT = float(os.environ.get("LUMINARY_HANDSHAKE_TIMEOUT_S", "5"))
MAX_UNAUTHENTICATED = int(os.environ.get("LUMINARY_MAX_UNAUTHENTICATED", "64"))


class ChannelError(ConnectionError):
    """A record failed its checks: the connection is closed."""


def tcp_mode():
    """The mode this process asks for on TCP: encrypted unless LUMINARY_TCP_ENCRYPTION=0
    (trusted networks only: records are then authenticated but readable)."""
    v = os.environ.get("LUMINARY_TCP_ENCRYPTION", "1").strip().lower()
    return INTEGRITY if v in ("0", "false", "off", "no") else ENCRYPTED


def transcript(ns, smode, nc, cmode):
    return MAGIC + ns + bytes((smode,)) + nc + bytes((cmode,))


def proof(secret, who, t):
    return hmac.new(secret, b"luminary3 " + who + b" proof|" + t, hashlib.sha256).digest()


def _aead(key):
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM   # imported only for TCP
    return AESGCM(key)


def derive(secret, t, mode, server):
    """(sealer, opener) for this side of a connection in ``mode`` (INTEGRITY or ENCRYPTED)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    def key(label):
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=t,
                    info=b"luminary3 " + label + bytes((mode,))).derive(secret)
    c2s, s2c = key(b"c2s"), key(b"s2c")
    enc = mode == ENCRYPTED
    return (Sealer(s2c if server else c2s, enc), Opener(c2s if server else s2c, enc))


class Sealer:
    """Turns a batch of outgoing buffers into records (one direction, one connection)."""

    POOL = 32                # large record buffers kept warm for reuse (fresh pages fault slowly)

    def __init__(self, key, encrypt):
        self.aead = _aead(key)
        self.encrypt = encrypt
        self.seq = 0
        self._free = []          # large record buffers no write holds any more
        self._inflight = collections.deque()    # (end offset in the stream, buffer) still queued
        self._offset = 0         # bytes handed to the transport so far

    def recycle(self, pending):
        """After a flush: the transport still holds the last ``pending`` bytes written, so every
        buffer that ends before them has been sent and can be reused."""
        sent = self._offset - pending
        q = self._inflight
        while q and q[0][0] <= sent:
            buf = q.popleft()[1]
            if len(self._free) < self.POOL:
                self._free.append(buf)

    def _nonce(self):
        self.seq += 1
        return self.seq.to_bytes(12, "big")

    def _seal(self, data, res):
        n = len(data)
        hdr = _LEN.pack(n)
        self._offset += HDR + n + TAG
        if self.encrypt:
            if n >= BIG:
                buf = self._free.pop() if self._free else bytearray(HDR + RECORD_MAX + TAG)
                self._inflight.append((self._offset, buf))
            else:
                buf = bytearray(HDR + n + TAG)
            out = memoryview(buf)[:HDR + n + TAG]
            out[:HDR] = hdr
            self.aead.encrypt_into(self._nonce(), data, hdr, out[HDR:])
            res.append(out)
        else:
            res.append(hdr)
            res.append(data)
            res.append(self.aead.encrypt(self._nonce(), b"", data))

    def seal(self, bufs):
        """Records for ``bufs`` in order: small buffers share records, a buffer of BIG bytes
        or more starts a record of its own (so a bulk payload starts on a record boundary)."""
        res, small, size = [], [], 0
        for b in bufs:
            n = b.nbytes if type(b) is memoryview else len(b)
            if n >= BIG:
                if small:
                    self._seal_joined(small, res)
                    small, size = [], 0
                view = memoryview(b).cast("B") if type(b) is memoryview else memoryview(b)
                for off in range(0, n, RECORD_MAX):
                    self._seal(view[off:off + RECORD_MAX], res)
            elif n:
                small.append(b)
                size += n
                if size >= RECORD_MAX:
                    self._seal_joined(small, res)
                    small, size = [], 0
        if small:
            self._seal_joined(small, res)
        return res

    def _seal_joined(self, small, res):
        data = small[0] if len(small) == 1 else b"".join(small)
        view = memoryview(data)
        for off in range(0, len(data), RECORD_MAX):
            self._seal(view[off:off + RECORD_MAX], res)


class Opener:
    """Collects incoming records and checks them (one direction, one connection)."""

    def __init__(self, key, encrypt):
        self.aead = _aead(key)
        self.encrypt = encrypt
        self.seq = 0
        self._hdr = bytearray()
        self._buf = bytearray(RECORD_MAX + TAG)
        self._plain = bytearray(RECORD_MAX)
        self.need = -1           # body + tag bytes of the current record; -1 while reading a header
        self.have = 0

    def take(self, view):
        """Consume bytes from ``view``; returns (rest, n) where n is the body length of a
        complete record (then ``open``/``open_into`` it before the next take) or -1."""
        if self.need < 0:
            k = HDR - len(self._hdr)
            self._hdr += view[:k]
            view = view[k:]
            if len(self._hdr) < HDR:
                return view, -1
            n = _LEN.unpack(self._hdr)[0]
            if not 0 < n <= RECORD_MAX:
                raise ChannelError(f"a record of {n} bytes (at most {RECORD_MAX})")
            self.need, self.have = n + TAG, 0
        k = min(self.need - self.have, len(view))
        self._buf[self.have:self.have + k] = view[:k]
        self.have += k
        view = view[k:]
        if self.have < self.need:
            return view, -1
        return view, self.need - TAG

    def _done(self):
        self.seq += 1
        hdr = bytes(self._hdr)
        self._hdr = bytearray()
        self.need = -1
        return self.seq.to_bytes(12, "big"), hdr

    def open_into(self, n, dest):
        """Check the complete record of body length ``n`` and write its plaintext into ``dest``."""
        from cryptography.exceptions import InvalidTag
        nonce, hdr = self._done()
        body = memoryview(self._buf)[:n + TAG]
        try:
            if self.encrypt:
                self.aead.decrypt_into(nonce, body, hdr, dest)
            else:
                self.aead.decrypt(nonce, body[n:], body[:n])
                dest[:n] = body[:n]
        except InvalidTag:
            raise ChannelError("a record failed its integrity check (altered, injected, replayed or "
                               "reordered, or the peer holds another secret)") from None

    def open(self, n):
        """Check the complete record; returns its plaintext (valid until the next record)."""
        dest = memoryview(self._plain)[:n]
        if not self.encrypt:    # check the tag in place, no copy
            from cryptography.exceptions import InvalidTag
            nonce, _ = self._done()
            body = memoryview(self._buf)[:n + TAG]
            try:
                self.aead.decrypt(nonce, body[n:], body[:n])
            except InvalidTag:
                raise ChannelError("a record failed its integrity check (altered, injected, replayed "
                                   "or reordered, or the peer holds another secret)") from None
            return body[:n]
        self.open_into(n, dest)
        return dest


class Guard:
    """Bounds what unauthenticated peers cost one listener: at most ``cap`` connections in the
    handshake (a new one beyond that closes the oldest, so a flood of idle connections cannot
    keep a fast, honest client out), each closed after HANDSHAKE_TIMEOUT; refusals are logged
    at most once a minute with a count."""

    def __init__(self, name, loop, cap=None):
        self.name, self.loop = name, loop
        self.cap = MAX_UNAUTHENTICATED if cap is None else cap
        self.pending = collections.OrderedDict()
        self.counts = collections.Counter()
        self._window = None        # the timer that logs the summary of the current minute
        self.refused_total = 0

    def admit(self, conn):
        while len(self.pending) >= self.cap:
            old, _ = self.pending.popitem(last=False)
            old.abort_handshake("too many unauthenticated connections")
        self.pending[conn] = None

    def done(self, conn):
        self.pending.pop(conn, None)

    def refused(self, peer, why):
        self.refused_total += 1
        if self._window is None:
            logger.warning("%s: refused a connection from %s: %s (further refusals are counted and "
                           "logged once a minute)", self.name, peer, why)
            self._window = self.loop.call_later(60.0, self._summary)
        else:
            self.counts[why] += 1

    def _summary(self):
        self._window = None
        if self.counts:
            n = sum(self.counts.values())
            why = "; ".join(f"{k} ({v})" for k, v in self.counts.most_common(4))
            logger.warning("%s: refused %d connections in the last minute: %s", self.name, n, why)
            self.counts.clear()
            self._window = self.loop.call_later(60.0, self._summary)
