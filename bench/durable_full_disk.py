"""Fire-and-forget durable publishes onto a full disk: what the broker answers, and what it holds in memory.

    .venv/bin/python -m bench.durable_full_disk [--messages 30000]

Needs root (it mounts a 2 MiB tmpfs, fills it, and unmounts it). A broker
process (``coremq_broker.start``, DURABLE_ALL) writes its history there; one
publish is stored, the disk is filled, then ``--messages`` publishes of 100
bytes are sent with replies off. Prints how many came back as
``ERROR: durable history unavailable``, the broker's resident memory before,
after and at its peak, and the store's counters; then frees the disk and
shows that the next publish is stored again, with the next id.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from coremq_broker import start  # noqa: E402
from disks import fill  # noqa: E402
from wire import RawClient  # noqa: E402


def memory_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(field)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=30_000)
    args = parser.parse_args()
    disk = Path(tempfile.mkdtemp(prefix="coremq-full-disk-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], check=True)
    try:
        run(disk, args.messages)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)
        os.rmdir(disk)


def run(disk: Path, messages: int) -> None:
    broker = start(port=0, durable_all=True, durable_path=str(disk / "history.sqlite3"), log_level="ERROR")
    try:
        client = RawClient(broker.host, broker.port, timeout=60)
        client.send("ticks", {"n": 0})
        print("before the disk is full:", client.read()[1])
        filler = fill(disk)
        client.control({"coremq_options": {"reply": False}})
        before = memory_kib(broker.pid, "VmRSS")
        answers: list[str] = []

        def read() -> None:
            while len(answers) < messages:
                answers.append(client.read()[1]["response"])

        reader = threading.Thread(target=read)
        reader.start()
        started = time.perf_counter()
        client.send_raw(b"".join(b"+%d ticks %s" % (len(body) + 6, body)
                                 for body in (b'{"n":%d,"pad":"%s"}' % (n, b"x" * 100) for n in range(messages))))
        reader.join()
        elapsed = time.perf_counter() - started
        after, peak = memory_kib(broker.pid, "VmRSS"), memory_kib(broker.pid, "VmHWM")
        unavailable = sum(a.startswith("ERROR: durable history unavailable") for a in answers)
        print(f"{messages} publishes, {unavailable} answered 'ERROR: durable history unavailable' in {elapsed:.2f} s")
        print(f"  of which 'database or disk is full': {sum('full' in a for a in answers)}, "
              f"'waiting for the disk': {sum('waiting for the disk' in a for a in answers)}")
        print(f"broker RSS {before / 1024:.1f} MB before, {after / 1024:.1f} MB after, peak {peak / 1024:.1f} MB")
        durable = client.control({"coremq_status": True})["durable"]
        print("store:", {key: durable[key] for key in ("state", "error", "pending", "failed", "refused", "outages")})
        filler.unlink()
        client.control({"coremq_options": {"reply": True}})
        deadline = time.monotonic() + 10
        while client.control({"coremq_status": True})["durable"]["state"] != "ok" and time.monotonic() < deadline:
            time.sleep(0.05)
        client.send("ticks", {"n": 1})
        print("after the disk was freed:", client.read()[1])
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
