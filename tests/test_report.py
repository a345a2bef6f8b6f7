"""``relay status`` for a person: one table that reads well in 80 columns, whatever the names,
numbers and errors; and the JSON for scripts, whose keys stay put."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from relay.report import human_age, sink_state, status_json, status_text
from relay.spool import SinkStats, SpoolStats

NOW = 1_800_000_000.0


def sink(name: str = "cloud", **kw: object) -> SinkStats:
    fields: dict[str, object] = {
        "depth": 0,
        "oldest_at": None,
        "attempts": 0,
        "last_error": None,
        "last_error_at": None,
        "delivered": 0,
        "dead_letters": 0,
    }
    fields.update(kw)
    return SinkStats(name, **fields)  # type: ignore[arg-type]


def spool(*sinks: SinkStats, path: str = "/var/lib/relay/spool.db", dropped: int = 0) -> SpoolStats:
    return SpoolStats(path, "full", 48_200, 256_000_000, 17, dropped, list(sinks))


GOLDEN = """\
spool /var/lib/relay/spool.db: 48.2 kB of 256.0 MB, durability full

SINK   STATE                 QUEUED  OLDEST  DLQ  LAST ERROR
cloud  retrying (attempt 3)      17      4m    0  2m ago: HTTP 503: Service Una\u2026
bus    caught up                  0       -    2  2h ago: broker closed the cha\u2026
local  queued                 1,204     41s    0  -"""


def test_golden_example() -> None:
    stats = spool(
        sink(
            "cloud",
            depth=17,
            oldest_at=NOW - 250,
            attempts=3,
            last_error="HTTP 503: Service Unavailable",
            last_error_at=NOW - 130,
        ),
        sink(
            "bus",
            last_error="broker closed the channel: (404) NOT_FOUND - no exchange 'x'",
            last_error_at=NOW - 7300,
            dead_letters=2,
        ),
        sink("local", depth=1204, oldest_at=NOW - 41.9),
    )
    assert status_text(stats, NOW) == GOLDEN


def test_a_wider_terminal_shows_more_of_the_error() -> None:
    error = "HTTP 503: Service Unavailable from https://hooks.example.com/relay"
    stats = spool(sink(depth=1, oldest_at=NOW, attempts=1, last_error=error, last_error_at=NOW))
    assert status_text(stats, NOW, width=200).splitlines()[-1].endswith(f"0s ago: {error}")


def test_long_errors_are_cut_with_an_ellipsis_on_one_line() -> None:
    error = "connection refused\n  while connecting to 127.0.0.1:8080 " + "x" * 200
    [row] = status_text(spool(sink(last_error=error, last_error_at=NOW)), NOW).splitlines()[3:]
    assert len(row) == 80 and row.endswith("\u2026")
    assert "0s ago: connection refused while connect" in row


def test_long_paths_keep_the_file_name() -> None:
    path = "/srv/" + "deep/" * 30 + "spool.db"
    line = status_text(spool(path=path, dropped=12), NOW).splitlines()[0]
    assert len(line) <= 80 and line.startswith("spool \u2026")
    assert "/deep/spool.db: 48.2 kB of 256.0 MB, 12 dropped, durability full" in line


def test_control_characters_in_errors_do_not_reach_the_terminal() -> None:
    error = "HTTP 502: \x1b[2J\x1b]0;owned\x07bad gateway"
    stats = spool(sink(last_error=error, last_error_at=NOW))
    row = status_text(stats, NOW, width=200).splitlines()[-1]
    assert row.endswith("0s ago: HTTP 502: ?[2J?]0;owned?bad gateway")


def test_no_sinks() -> None:
    assert (
        status_text(spool(), NOW).splitlines()[1] == "no sinks configured: events wait in the spool"
    )


names = st.text("abcdefghijklmnopqrstuvwxyz0123456789_.-", min_size=1, max_size=64)


@given(
    st.lists(
        st.builds(
            sink,
            names,
            depth=st.integers(0, 10**9),
            oldest_at=st.none() | st.floats(NOW - 10**8, NOW),
            attempts=st.integers(0, 10**6),
            last_error=st.none() | st.text(max_size=1000),
            last_error_at=st.just(NOW - 5),
            dead_letters=st.integers(0, 10**9),
        ),
        max_size=5,
    ),
    st.text(st.characters(blacklist_categories=("Cc", "Zl", "Zp")), min_size=1, max_size=300),
)
def test_no_line_is_wider_than_80_columns(sinks: list[SinkStats], path: str) -> None:
    text = status_text(spool(*sinks, path=path), NOW)
    assert all(len(line) <= 80 for line in text.splitlines()), text
    assert len(text.splitlines()) == (2 + 1 + len(sinks) if sinks else 2)


def test_human_ages() -> None:
    assert [human_age(s) for s in (None, 0, 3.9, 59, 240, 3599, 7300, 5 * 86400 + 3)] == [
        "-",
        "0s",
        "3s",
        "59s",
        "4m",
        "59m",
        "2h",
        "5d",
    ]


def test_state_from_what_the_spool_knows() -> None:
    assert sink_state(sink()) == "caught up"
    assert sink_state(sink(depth=3)) == "queued"
    assert sink_state(sink(depth=3, attempts=4)) == "retrying (attempt 4)"


def test_json_keys_are_stable() -> None:
    doc = status_json(spool(sink(depth=1, oldest_at=NOW - 2)), NOW)
    assert set(doc) == {"spool", "sinks"}
    assert set(doc["spool"]) == {
        "path",
        "durability",
        "bytes",
        "max_bytes",
        "rows",
        "dropped",
        "disk_free_bytes",
        "bytes_written_per_event",
        "bytes_written_window_s",
    }
    assert set(doc["sinks"][0]) == {
        "name",
        "depth",
        "oldest_age_s",
        "head_attempts",
        "last_error",
        "last_error_age_s",
        "delivered",
        "dead_letters",
        "started",
    }
    assert doc["sinks"][0]["oldest_age_s"] == 2.0


def test_a_disk_that_fills_before_max_size_is_said_in_80_columns() -> None:
    # 48.2 kB of 256 MB used: the spool may grow ~256 MB more, and the disk has 40 MB.
    low = status_text(
        SpoolStats("/var/lib/relay/spool.db", "full", 48_200, 256_000_000, 17, 0, [], 40_000_000),
        NOW,
    )
    line = low.splitlines()[1]
    assert line == "low disk: 40.0 MB free, spool may grow 256.0 MB; free space or lower max_size"
    assert len(line) <= 80
    roomy = SpoolStats("/x/spool.db", "full", 48_200, 256_000_000, 17, 0, [], 10**10)
    assert "low disk" not in status_text(roomy, NOW)
    assert "low disk" not in status_text(spool(), NOW)  # free space unknown (in memory)
    assert status_json(roomy, NOW)["spool"]["disk_free_bytes"] == 10**10
