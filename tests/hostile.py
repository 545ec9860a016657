"""The hostile corpus: what a client may send that no path of the broker may choke on.

One list, driven through every path by tests/broker/test_hostile_door.py (TCP,
both JSON back-ends) and tests/security/test_hostile_corpus.py (real
run_coremq and daphne processes, browsers on both kinds of bridge, durable
history across a restart). Each :class:`Case` is the JSON text of a frame and
what the broker must answer: accepted (an ``OK`` with the next id) or refused
(an ``ERROR:`` naming ``reason``, with no id used and no connection closed).
"""

from __future__ import annotations

from dataclasses import dataclass

from coremq_client.codec import MAX_NESTING

__all__ = ["Case", "CORPUS", "NameCase", "NAMES", "nested_array", "nested_object", "browser_accepts", "tcp_probe"]


@dataclass(frozen=True)
class Case:
    """A frame's JSON text and the broker's answer to it over TCP."""

    label: str
    body: bytes
    accepted: bool
    reason: str = ""  # a part of the ERROR reason, when refused
    depth: int = 1  # how deep it nests (a browser's request adds one level)

    @property
    def text(self) -> str | None:
        """The body as text, as a browser sends it; None if it is not UTF-8 (no text frame can carry it)."""
        try:
            return self.body.decode()
        except UnicodeDecodeError:
            return None

    def __repr__(self) -> str:
        return f"<Case {self.label}>"


def nested_array(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def nested_object(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def _deep(label: str, body: bytes, depth: int) -> Case:
    accepted = depth <= MAX_NESTING
    return Case(label, body, accepted, "" if accepted else f"JSON nested {depth} levels deep, limit is {MAX_NESTING}",
                depth)


_EDGES = sorted({MAX_NESTING - 1, MAX_NESTING, MAX_NESTING + 1, 253, 254, 255, 1024, 1025, 3000})

CORPUS: list[Case] = [
    # Nesting at the edges: the bound, orjson's writing limit (254) and its reading limit (1024).
    *[_deep(f"array nested {n}", nested_array(n), n) for n in _EDGES],
    *[_deep(f"object nested {n}", nested_object(n), n) for n in _EDGES],
    *[_deep(f"array in an object nested {n}", b'{"deep":' + nested_array(n - 1) + b"}", n)
      for n in (MAX_NESTING, MAX_NESTING + 1, 254)],
    Case("brackets inside strings", b'{"s":"' + b"[" * 300 + b'{{{"}', True),
    Case("escaped quotes before brackets", b'{"s":"\\"' + b"[" * 300 + b'\\\\","t":[1]}', True, depth=2),
    Case("wide, not deep", b"[" + b",".join([b"[[]]"] * 300) + b"]", True, depth=3),
    Case("unbalanced", b"[" * 300, False, "JSON nested 300 levels deep", depth=300),
    # Strings and Unicode.
    Case("lone high surrogate", b'{"s":"\\ud800"}', False, "invalid JSON"),
    Case("lone low surrogate", b'{"s":"x\\udc00"}', False, "invalid JSON"),
    Case("high surrogate at the end", b'["\\udbff"]', False, "invalid JSON"),
    Case("reversed surrogate pair", b'{"s":"\\ude00\\ud83d"}', False, "invalid JSON"),
    Case("surrogate pair", b'{"s":"\\ud83d\\ude00"}', True),
    Case("escaped backslash before u", b'{"s":"\\\\ud800"}', True),
    Case("escaped NUL", b'{"s":"\\u0000"}', True),
    Case("raw NUL in a string", b'{"s":"a\x00b"}', False, "invalid JSON"),
    Case("NUL after the JSON", b'{"s":1}\x00', False, "invalid JSON"),
    Case("raw tab in a string", b'{"s":"a\tb"}', False, "invalid JSON"),
    Case("invalid UTF-8", b'{"s":"\xff"}', False, "invalid JSON"),
    Case("UTF-8 of a surrogate", b'{"s":"\xed\xa0\x80"}', False, "invalid JSON"),
    Case("overlong UTF-8", b'{"s":"\xc0\xaf"}', False, "invalid JSON"),
    Case("truncated UTF-8", b'{"s":"\xe2\x82"}', False, "invalid JSON"),
    Case("byte order mark", b'\xef\xbb\xbf{"s":1}', False, "invalid JSON"),
    Case("UTF-16", '{"s":1}'.encode("utf-16-le"), False, "invalid JSON"),
    Case("non-ASCII text", '{"s":"é – 漢字 😀 \u2028"}'.encode(), True),
    # Numbers.
    Case("NaN", b'{"n":NaN}', False, "invalid JSON"),
    Case("Infinity", b'{"n":Infinity}', False, "invalid JSON"),
    Case("-Infinity", b'[-Infinity]', False, "invalid JSON"),
    Case("beyond a double", b'{"n":1e400}', False, "invalid JSON"),
    Case("beyond a double, negative", b'{"n":-1e400}', False, "invalid JSON"),
    Case("400-digit integer", b'{"n":' + b"9" * 400 + b"}", False, "invalid JSON"),
    Case("5000-digit integer", b'{"n":' + b"9" * 5000 + b"}", False, "invalid JSON"),
    Case("largest double", b'{"n":1.7976931348623157e308}', True),
    Case("tiny double", b'{"n":1e-400}', True),
    Case("2**64 - 1", b'{"n":18446744073709551615}', True),
    Case("2**64", b'{"n":18446744073709551616}', True),
    Case("-2**63 - 1", b'{"n":-9223372036854775809}', True),
    Case("30-digit integer in an array", b"[123456789012345678901234567890]", True),
    # Keys: duplicates, the broker's own.
    Case("duplicate keys", b'{"a":1,"a":2}', True),
    Case("duplicate stamp keys", b'{"coremq_sender":"x","coremq_sender":"y"}', True),
    Case("a forged id", b'{"coremq_id":1000000,"x":1}', True),
    Case("a forged sender", b'{"coremq_sender":"00000000-0000-4000-8000-000000000000","x":1}', True),
    Case("a forged time", b'{"coremq_sent":"yesterday"}', True),
    Case("string wrapper of a number", b'{"coremq_string":5}', True),
    Case("array wrapper of a string", b'{"coremq_array":"x"}', True),
    Case("a control key sent to a queue", b'{"coremq_subscribe":["x"]}', True),
    Case("an unknown coremq key", b'{"coremq_bogus":1}', True),
    # Types and shapes.
    Case("a string", b'"plain"', True, depth=0),
    Case("an array", b"[1,2,3]", True),
    Case("an empty object", b"{}", True),
    Case("blanks after the brace", b'{"a":1}  ', True),
    Case("a number", b"42", False, "not a number", depth=0),
    Case("null", b"null", False, "not null", depth=0),
    Case("true", b"true", False, "not a boolean", depth=0),
    Case("two values", b'{"a":1}{"b":2}', False, "invalid JSON"),
    Case("a trailing comma", b'{"a":1,}', False, "invalid JSON"),
    Case("single quotes", b"{'a':1}", False, "invalid JSON"),
    Case("nothing but blanks", b"   ", False, "invalid JSON", depth=0),
]


def browser_accepts(case: Case) -> bool:
    """Whether a browser's publish of ``case`` as its ``message`` is taken.

    The browser's request object is one more level: its frame nests one deeper
    than the message, and a frame may nest :data:`MAX_NESTING` levels.
    """
    return case.accepted and case.depth + 1 <= MAX_NESTING


@dataclass(frozen=True)
class NameCase:
    """A queue name to publish to, and the broker's answer (``{own}`` is the publisher's id)."""

    label: str
    name: str
    accepted: bool
    reason: str = ""

    def __repr__(self) -> str:
        return f"<NameCase {self.label}>"


NAMES: list[NameCase] = [
    NameCase("200 characters", "n" * 200, True),
    NameCase("201 characters", "n" * 201, False, "201 characters, limit is 200"),
    NameCase("200 two-byte characters", "é" * 200, True),
    NameCase("201 four-byte characters", "😀" * 201, False, "201 characters, limit is 200"),
    NameCase("NUL", "a\x00b", False, "control character"),
    NameCase("escape", "a\x1bb", False, "control character"),
    NameCase("DEL", "a\x7fb", False, "control character"),
    NameCase("C1 control", "a\x9bb", False, "control character"),
    NameCase("next line", "a\x85b", False, "whitespace"),
    NameCase("no-break space", "a\u00a0b", False, "whitespace"),
    NameCase("line separator", "a\u2028b", False, "whitespace"),
    NameCase("superscript two", "q\u00b2", True),
    NameCase("Arabic-Indic three", "q\u0663", True),
    NameCase("fullwidth letters", "\uff51\uff55\uff45\uff55\uff45", True),
    NameCase("zero-width space", "q\u200bq", True),
    NameCase("own id, superscript two", "{own}/\u00b2", True),
    NameCase("own id, Arabic-Indic digit", "{own}/\u0663", True),
    NameCase("own id, leading zero", "{own}/01", True),
    NameCase("an id in capitals", "0B9C0B9C-0B9C-4B9C-8B9C-0B9C0B9C0B9C", True),
    NameCase("an id no connection has", "0b9c0b9c-0b9c-4b9c-8b9c-0b9c0b9c0b9c", False, "no such connection"),
    NameCase("a sub-address of an id no connection has", "0b9c0b9c-0b9c-4b9c-8b9c-0b9c0b9c0b9c/1", False,
             "no such connection"),
]


def tcp_probe(host: str, port: int) -> None:
    """The health probe of a TCP client: a welcome, a subscription, a publish, its delivery within a second."""
    from wire import RawClient  # tests/wire.py; imported here so that the corpus needs no socket

    subscriber = RawClient(host, port, timeout=1.0)
    publisher = RawClient(host, port, timeout=1.0)
    try:
        assert subscriber.welcome["response"].startswith("OK:") and publisher.welcome["response"].startswith("OK:")
        queue = f"probe-{publisher.id[:8]}"
        assert subscriber.control({"coremq_subscribe": [queue]})["response"] == "OK: Subscribe successful"
        publisher.send(queue, {"probe": publisher.id})
        assert publisher.read()[1]["response"] == "OK: Message sent"
        name, message = subscriber.read()  # a socket timeout of 1 s: delivered within a second
        assert (name, message["probe"]) == (queue, publisher.id)
    finally:
        subscriber.close()
        publisher.close()
