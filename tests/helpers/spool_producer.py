"""Run as a subprocess by the kill test: THREADS threads put events into the spool at DIR
and print "t i" for each put as soon as it returned (so the parent knows it was acknowledged)."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from relay.event import Event
from relay.spool import Spool


def main() -> None:
    state_dir, threads, per_thread = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    spool = Spool.open(state_dir, durability="full", check=True)
    spool.register_sinks(["a"])
    out = sys.stdout.fileno()

    def produce(t: int) -> None:
        for i in range(per_thread):
            spool.put(Event.new(node="k", source="test", name="x", payload={"t": t, "i": i}))
            os.write(out, f"{t} {i}\n".encode())  # one write per line: lines never interleave

    workers = [threading.Thread(target=produce, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    spool.close()
    os.write(out, b"done\n")


if __name__ == "__main__":
    main()
