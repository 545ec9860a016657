"""The store's memcached protocol answers byte for byte as a real memcached 1.6 does.

Each case is sent to a fresh memcached and a fresh CoreMQ store: whole, one
byte per packet, and in uneven pieces. Documented differences (docs/store.md):
``stats`` values and the ``VERSION`` string, normalised here.
"""

from __future__ import annotations

import random
import re

import pytest

from memcached_peers import exchange

BIG = 2_000_000  # over the 1 MiB item limit
LIMIT_VALUE = 1048576 - 59 - 1  # the largest value memcached takes under a one-byte key

CASES: dict[str, bytes] = {
    "storage": (b"set a 5 0 3\r\nabc\r\nget a\r\nadd a 0 0 1\r\nx\r\nadd b 7 0 1\r\ny\r\nreplace c 0 0 1\r\nz\r\n"
                b"replace a 9 0 2\r\nzz\r\nappend a 1 1 2\r\n12\r\nprepend a 1 1 2\r\n00\r\nappend n 0 0 1\r\nx\r\n"
                b"prepend n 0 0 1\r\nx\r\nget a b c\r\ngets a b\r\n"),
    "cas": (b"set a 0 0 1\r\nx\r\ngets a\r\ncas a 0 0 1 1\r\ny\r\ncas a 0 0 1 2\r\ny\r\ncas n 0 0 1 1\r\ny\r\n"
            b"gets a\r\ncas a 0 0 1 abc\r\nx\r\ncas a 0 0 1\r\nx\r\ncas a 0 0 1 -1\r\nx\r\n"),
    "incr_decr": (b"set a 3 0 2\r\n10\r\ndecr a 1\r\nget a\r\nincr a 18446744073709551615\r\nget a\r\n"
                  b"incr a 18446744073709551616\r\nincr a -1\r\nincr a x\r\n"
                  b"set b 0 0 20\r\n18446744073709551615\r\nincr b 2\r\nget b\r\nset c 0 0 3\r\n 12\r\nincr c 1\r\n"
                  b"set d 0 0 3\r\n-12\r\nincr d 1\r\nset e 0 0 1\r\n9\r\nincr e 1\r\nget e\r\nincr nokey 1\r\n"
                  b"set f 0 0 3\r\nabc\r\nincr f 1\r\nset g 0 0 4\r\n12 x\r\nincr g 1\r\nget g\r\nset h 0 0 0\r\n\r\n"
                  b"incr h 1\r\nset i 0 0 21\r\n184467440737095516150\r\nincr i 1\r\nincr\r\nincr a\r\n"
                  b"decr a 1 2\r\nincr a +5\r\n"),
    "delete_touch": (b"set a 0 0 1\r\nx\r\ndelete a\r\ndelete a\r\nset a 0 0 1\r\nx\r\ndelete a 0\r\n"
                     b"delete a 5\r\ndelete a 0 noreply\r\ndelete a x noreply\r\ndelete a noreply\r\n"
                     b"set b 0 0 1\r\nx\r\ntouch b 100\r\ntouch n 1\r\ntouch b\r\ntouch b x\r\ngat 100 b n\r\n"
                     b"gats 0 b n\r\ngat x b\r\ngat 100\r\ngat\r\ndelete\r\ndelete a 0 noreply x\r\n"),
    "noreply": (b"set a 0 0 1 noreply\r\nx\r\nadd a 0 0 1 noreply\r\ny\r\nget a\r\nincr a 1 noreply\r\n"
                b"incr a x noreply\r\nset b 0 0 2 noreply\r\nabcd\r\nset n 0 0 1 noreply\r\n5\r\n"
                b"incr n 3 noreply\r\ntouch n 10 noreply\r\nget n\r\nflush_all noreply\r\nflush_all 0 noreply\r\n"
                b"get n\r\nverbosity 1 noreply\r\nset a 0 0 1 noreply extra\r\nx\r\nset a 0 0 1 extra\r\nx\r\n"),
    "malformed": (b"bogus\r\n\r\nx\r\nget\r\ngets\r\nGET a\r\nset a 0 0\r\nset a 0 0 -1\r\nab\r\n"
                  b"set a x 0 1\r\nx\r\nset a -1 0 1\r\nx\r\nset a 4294967296 0 1\r\nx\r\nget a\r\n"
                  b"set a 0 abc 1\r\nx\r\nset a 0 0 1x\r\nx\r\nset a 0 0 2\r\nabcd\r\nget a\r\n"
                  b"set a 0 0 1\nx\nget a\n" + b"set " + b"k" * 251 + b" 0 0 1\r\na\r\n"
                  b"set " + b"k" * 250 + b" 0 0 1\r\na\r\nget " + b"k" * 250 + b"\r\n"
                  b"verbosity\r\nverbosity x\r\nverbosity 1\r\nflush_all x\r\nflush_all 0\r\nflush_all 1 2 3\r\n"
                  b"  get   a  \r\nset a 0 0 1 a b c d e f g h i j k l m n o p q r s t u v w\r\nx\r\n"
                  b"m\r\nmx\r\nsomething long and unknown with many tokens a b c d e f g h i j k l m n o p q r s\r\n"),
    "binary_values": (b"set a 1 0 8\r\n\x00\r\n\xff\x01\r\n\n\r\nget a\r\nset b 0 0 4\r\nEND\r\r\nget b\r\n"
                      b"set c 0 0 10\r\nVALUE x 0\r\ngets c\r\n"),
    "expiry": (b"set a 0 -1 1\r\nx\r\nget a\r\nadd a 0 0 1\r\ny\r\nget a\r\nset b 0 100 1\r\nx\r\nget b\r\n"
               b"set c 0 2592000 1\r\nx\r\nget c\r\nset d 0 2592001 1\r\nx\r\nget d\r\nset e 0 4102444800 1\r\nx\r\n"
               b"get e\r\nset f 0 2147483648 1\r\nx\r\nget f\r\nset g 0 4294967296 1\r\nx\r\nget g\r\n"
               b"touch e -1\r\nget e\r\nset h 0 0 1\r\nx\r\ngat -1 h\r\nget h\r\nmg b t\r\nmg c t\r\n"),
    "too_large": (b"set a 0 0 1\r\n1\r\nset a 0 0 %d\r\n" % BIG + b"x" * BIG + b"\r\nget a\r\n"
                  b"set b 0 0 1\r\n1\r\nset b 0 0 %d noreply\r\n" % BIG + b"x" * BIG + b"\r\nget b\r\n"
                  b"set c 0 0 1\r\n1\r\nadd c 0 0 %d\r\n" % BIG + b"x" * BIG + b"\r\nget c\r\n"
                  b"set k 0 0 %d\r\n" % LIMIT_VALUE + b"y" * LIMIT_VALUE + b"\r\nmg k s\r\n"
                  b"set k 0 0 %d\r\n" % (LIMIT_VALUE + 1) + b"y" * (LIMIT_VALUE + 1) + b"\r\nmg k s\r\n"
                  b"set d 0 0 1\r\n1\r\nappend d 0 0 %d\r\n" % LIMIT_VALUE + b"z" * LIMIT_VALUE + b"\r\nmg d s\r\n"),
    "flush": (b"set a 0 0 1\r\nx\r\nset b 0 0 1\r\ny\r\nflush_all\r\nget a b\r\nset c 0 0 1\r\nz\r\n"
              b"flush_all 100\r\nget c\r\nflush_all 0\r\nget c\r\n"),
    "meta_get": (b"set m 7 0 2\r\nhi\r\nmg m v\r\nmg m t f c v k s\r\nmg m\r\nmg m q\r\nmg m q v\r\nmg m k q\r\n"
                 b"mg n v\r\nmg n\r\nmg n q v\r\nmg n O123 k\r\nmg m O9 k f\r\nmg m T100 t\r\nmg m t\r\nmg m h\r\n"
                 b"mg m zz\r\nmg\r\nmg m Tx\r\nmg " + b"k" * 251 + b" v\r\nmg m s v f\r\nmg m l\r\n"),
    "meta_set": (b"ms m 2\r\nhi\r\nms m 2 T0 F5 c\r\nhi\r\nmg m f v c\r\nms m 2 MA\r\nyo\r\nmg m v\r\n"
                 b"ms nm 2 ME\r\nxx\r\nms nm 2 ME q\r\nxx\r\nms m 2 C1\r\nzz\r\nms m 1 q\r\nx\r\nms m 2 I\r\nxx\r\n"
                 b"ms m S2\r\nxx\r\nms m 2 T-1\r\nxx\r\nmg m v\r\nms m 2 Mz\r\nxx\r\nms m 2 Fx\r\nxx\r\n"
                 b"ms m 1 F-1\r\nx\r\nms m 1 Tx\r\nx\r\nms m 2 O5 k\r\nab\r\nms m 2 MR\r\ncd\r\nms q 2 MR\r\ncd\r\n"
                 b"ms m 2 MP\r\n01\r\nmg m v\r\nms m\r\nms m abc\r\nms\r\nms m 2 c\r\nabc\r\nms m 1 zz\r\nx\r\n"
                 b"ms bQ== 1 b\r\nx\r\nmg m v\r\nms m 1 b\r\nx\r\n"),
    "meta_delete_arith": (b"set m 0 0 1\r\nx\r\nmd m q\r\nmd m\r\nmd m q\r\nmd m q k O1\r\nmd\r\nset m 0 0 1\r\nx\r\n"
                          b"md m O1 k\r\nma x\r\nma x N0 J5 v\r\nma x v\r\nma x MD D10 v\r\nma x q\r\nma x v\r\n"
                          b"ma x MI D3 v\r\nma x M+ v\r\nma x M- D100 v\r\nma x MD v t\r\nma x J5\r\n"
                          b"ma q N100 J7 v t\r\nma x Dx\r\nma x Mx\r\nma\r\nset s 0 0 1\r\na\r\nma s v\r\n"),
    # A get with a key over 250 bytes: memcached drops the answers of that read not yet written.
    "long_keys": (b"set a 0 0 1\r\nx\r\nget a " + b"k" * 251 + b" a\r\nget a\r\nget " + b"k" * 251 + b"\r\n"
                  b"set " + b"k" * 251 + b" 0 0 1\r\na\r\nincr " + b"k" * 251 + b" 1\r\ntouch " + b"k" * 251 + b" 1\r\n"
                  b"delete " + b"k" * 251 + b"\r\nmg " + b"k" * 251 + b" v\r\nms " + b"k" * 251 + b" 1\r\nx\r\n"),
    # A flag given twice is refused (before the key is decoded), the first bad token counting.
    "meta_flags": (b"set m 0 0 1\r\n1\r\nmg m v v\r\nmg m v v Z\r\nmg m v Z v\r\nmg m O1 O2\r\nmg m k k\r\n"
                   b"mg m T1 T\r\nmg n q q v\r\nmg !!! b b\r\nms m 1 T1 T1\r\nx\r\nms m 1 q q\r\nx\r\n"
                   b"ms m 1 T1 T1 Z\r\nx\r\nms m 1 Z T1 T1\r\nx\r\nmg m v\r\nmd m q q\r\nmd m k k\r\nmd m Z\r\n"
                   b"ma m D1 D2\r\nma m v v\r\nma m C1 C1\r\nma m Z\r\nmd n q q\r\nmg m v\r\n"
                   # a base64 key is echoed with " b" after it in the answers that do not read an item
                   b"mg bm8= b k O1\r\nma bm8= b k\r\nmd bm8= b k\r\nmd bQ== b k O2\r\nmd bQ== C1 b k\r\n"
                   # a key token over 250 bytes is refused before its flags are looked at
                   b"mg " + b"k" * 251 + b" v v\r\nmg " + b"k" * 251 + b" Z\r\nmd " + b"k" * 251 + b" q q\r\n"
                   b"ma " + b"k" * 251 + b" Z\r\nmg " + b"QUFB" * 63 + b" b v\r\n"),
    # memcached's base64 decoder skips characters outside the alphabet and stops after a padded block;
    # md and ma check their numeric flags (any of them bad: invalid or duplicate flag) before the key.
    "meta_base64_and_numbers": (b"ms YWJj 1 b\r\nx\r\nmg YW_Jj b v\r\nmg YW\x7fJj b v\r\nmg YWJj= b v\r\n"
                                b"mg YWJj==== b v\r\nmg YWI=YWJj b v\r\nms a_b_c_d_ 1 b TE\r\nx\r\n"
                                b"ms a_b_c_d_ 1 b T5\r\ny\r\nmg abcd b v\r\nma k NI\r\nma k Nx\r\nma k TI\r\n"
                                b"ma k CI\r\nma k D1 JD MS\r\nma k MS JD\r\nma k_ NE b\r\nmd k CR\r\nmd k TR\r\n"
                                b"md k C-\r\nmd k_ CE b\r\nset k 0 0 1\r\n1\r\nmd k T-1\r\nmg k v\r\n"),
    # k echoes a base64 key re-encoded from what was decoded; md and ma call an undecodable key an
    # invalid flag; ms checks T before F, C and M, and those in the request's order.
    "meta_echo_and_order": (b"ms a_b_c_d_ 1 b k\r\ny\r\nmd a_b_c_d_ b k\r\nma zz_zz b k\r\nmg zz_zz b k\r\n"
                            b"md zz_zz C1 b k\r\nmd k_ b\r\nma k_ b\r\nms m 3 FD T- O-1 q\r\n 12\r\n"
                            b"ms m 3 C FS c\r\n 12\r\nms m 3 FI M-\r\nabc\r\nms m 3 M- FI\r\nabc\r\n"
                            # ma's C0 compares nothing (md's and ms's do compare)
                            b"set c0 0 0 2\r\n12\r\nma c0 C0 v\r\nmd c0 C0\r\nms c0 2 C0\r\n34\r\nmg c0 v\r\n"),
    # A space before the line's end is no token (memcached's tokenizer skips it).
    "trailing_space": (b"set ts 0 0 1 \r\n5\r\nget ts \r\nincr ts 1 \r\nincr ts \r\ndecr ts 1 noreply \r\n"
                       b"touch ts 100 \r\nmg ts v \r\nms ts 1 \r\n7\r\nma ts \r\nmd ts q \r\ndelete ts \r\n"
                       b"add ts 0 0 1 noreply \r\n8\r\ngat 0 ts \r\ndelete ts 0 \r\nverbosity 1 \r\nflush_all 0 \r\n"
                       b"version \r\nverbosity 0 noreply \r\n"),
    "mn_and_version": b"mn\r\nversion\r\nversion x\r\nmn\r\n",
    "quit": b"set a 0 0 1\r\nx\r\nget a\r\nquit\r\nget a\r\n",
}


def _normalise(answer: bytes) -> bytes:
    answer = re.sub(rb"VERSION [^\r]*\r\n", b"VERSION <v>\r\n", answer)
    return re.sub(rb"STAT [^\r]*\r\n", b"STAT <s>\r\n", answer)


def _compare(memcached, store_server, chunks, pause=0.0, end=b"mn\r\n"):
    expected = exchange(memcached.port, chunks, pause=pause, end=end)
    got = exchange(store_server.port, chunks, pause=pause, end=end)
    assert _normalise(got) == _normalise(expected)
    return got


@pytest.mark.parametrize("name", sorted(CASES))
def test_case_whole(name, memcached, store_server):
    """One write of the whole sequence: every answer is memcached's, byte for byte."""
    _compare(memcached, store_server, [CASES[name]])


@pytest.mark.parametrize("name", sorted(n for n in CASES if len(CASES[n]) < 5000))
def test_case_split_one_byte_per_packet(name, memcached, store_server):
    """Commands split anywhere, one byte per packet, are answered the same."""
    data = CASES[name]
    _compare(memcached, store_server, [data[i:i + 1] for i in range(len(data))], pause=0.0005)


@pytest.mark.parametrize("name", sorted(CASES))
def test_case_uneven_pieces(name, memcached, store_server):
    """Commands and data blocks cut at random places into packets are answered the same."""
    data, rng, chunks, at = CASES[name], random.Random(name), [], 0
    while at < len(data):
        step = rng.choice((1, 3, 7, 64, 1500, 70000))
        chunks.append(data[at:at + step])
        at += step
    _compare(memcached, store_server, chunks, pause=0.001 if len(chunks) < 300 else 0.0)


def test_pipelined_many(memcached, store_server):
    """Thousands of pipelined commands in one write get thousands of answers, in order."""
    data = b"".join(b"set k%d 0 0 %d\r\n%s\r\nget k%d\r\nincr n 1\r\n" % (i, len(str(i)), str(i).encode(), i)
                    for i in range(3000))
    got = _compare(memcached, store_server, [b"set n 0 0 1\r\n0\r\n" + data])
    assert got.count(b"STORED\r\n") == 3001


def test_stats_shape(memcached, store_server):
    """stats, stats settings/items/slabs answer STAT lines and END like memcached (values differ)."""
    for command in (b"stats\r\n", b"stats settings\r\n", b"stats bogus\r\n"):
        expected = exchange(memcached.port, [command])
        got = exchange(store_server.port, [command])
        assert got.endswith(b"END\r\nMN\r\n") == expected.endswith(b"END\r\nMN\r\n"), command
        assert (got == b"ERROR\r\nMN\r\n") == (expected == b"ERROR\r\nMN\r\n"), command
    stats = exchange(store_server.port, [b"set a 0 0 1\r\nx\r\nget a\r\nget b\r\nstats\r\n"])
    assert b"STAT get_hits 1\r\n" in stats and b"STAT get_misses 1\r\n" in stats and b"STAT curr_items 1\r\n" in stats


@pytest.mark.parametrize("line", [b"x" * 3000, b"set " + b"k" * 3000, b"get " + b"k " * 1500 + b"\r\n"])
def test_long_line(line, memcached, store_server):
    """A line over 2048 bytes without its newline closes the connection, unless it is a get of many keys."""
    got = _compare(memcached, store_server, [line], pause=0.2, end=b"")
    assert got.endswith(b"<closed>") == (not line.startswith(b"get "))


def test_long_get_line_in_pieces(memcached, store_server):
    """A get of 1,500 keys arriving in 1 kB pieces is read to its end and answered like memcached."""
    line = b"set k 0 0 1\r\nx\r\nget " + b"k " * 1500 + b"\r\n"
    got = _compare(memcached, store_server, [line[i:i + 1000] for i in range(0, len(line), 1000)], pause=0.05)
    assert got.count(b"VALUE k 0 1") == 1500
