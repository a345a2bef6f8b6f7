"""relay.spool.wear on a fake clock and a fake /proc/self/io: bytes per event over the last
hour, sampled at most once a minute."""

from __future__ import annotations

from relay.spool.wear import EVERY_S, WearMeter, write_bytes


class Fake:
    def __init__(self) -> None:
        self.now, self.written = 0.0, 0

    def clock(self) -> float:
        return self.now

    def read(self) -> int:
        return self.written


def test_bytes_per_event_over_the_last_hour() -> None:
    fake = Fake()
    meter = WearMeter(fake.clock, fake.read)
    assert meter.due() and meter.sample(0) is None  # where it starts
    assert not meter.due()
    stored = 0
    for minute in range(1, 121):  # two hours at 10 events/s, 6.5 kB each; then 3 kB each
        fake.now = minute * EVERY_S
        stored += 600
        fake.written += 600 * (6_500 if minute <= 60 else 3_000)
        assert meter.due()
        figure = meter.sample(stored)
    assert figure == (3_000, 3_600)  # only the last hour counts


def test_this_process_can_read_its_own_io() -> None:
    assert isinstance(write_bytes(), int)  # Linux: what the bench and status rely on
