"""Fleet metrics (voxbox.host.metrics): the core driven by events, the file written for
node_exporter's textfile collector and read back with the official parser
(prometheus_client.parser), and the atomic write (no temporary file left, a failed write
leaves the previous file intact, never an OSError into the caller)."""
import json
import math
import os
import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import leftovers
from voxbox.host.metrics import LINK_STATES, MetricsWriter, UnitMetrics, read_selftest, render


def parse(text):
    """{family name: (type, {(sample name, sorted labels): value})} via the official parser."""
    out = {}
    for fam in text_string_to_metric_families(text):
        assert fam.name not in out, f"family {fam.name} twice"
        out[fam.name] = (fam.type, {(s.name, tuple(sorted(s.labels.items()))): s.value for s in fam.samples},
                         fam.documentation)
    return out


def value(fams, family, sample=None, **labels):
    _typ, samples, _ = fams[family]
    return samples[(sample or family, tuple(sorted(labels.items())))]


def driven(clocks):
    mono, wall = clocks
    um = UnitMetrics("1.2.3", clock=mono, wall_clock=wall)
    for _ in range(3):
        um.on_turn()
    um.on_wake_word()
    um.on_wake_word()
    um.on_barge_in_rejected()
    um.on_barge_in("near-end speech")
    um.on_barge_in("wake word")
    um.on_barge_in("wake word")
    um.on_barge_in("something new")
    um.on_underrun()
    um.on_underrun(4)
    um.on_reconnect()
    um.set_link("up")
    um.set_echo_delay_ms(12.5)
    um.set_erl_db(8.25)
    um.set_erle_db(-3.5)
    um.set_selftest("PASS", 1_733_300_000.0)
    mono.t += 90.0
    wall.t += 90.0
    return um


COUNTERS = {"voxbox_turns": 3, "voxbox_wake_words": 2, "voxbox_barge_in_rejected": 1,
            "voxbox_underruns": 5, "voxbox_reconnects": 1}


def test_events_rendered_and_parsed_by_the_official_parser(clocks, tmp_path):
    um = driven(clocks)
    path = tmp_path / "textfile" / "voxbox.prom"  # the directory is created
    w = MetricsWriter(um, path)
    assert w.write() is True and w.error is None
    text = path.read_text(encoding="utf-8")
    fams = parse(text)

    for name, want in COUNTERS.items():
        assert fams[name][0] == "counter", name
        assert value(fams, name, name + "_total") == want
        assert f"# TYPE {name}_total counter" in text
    assert fams["voxbox_barge_in_confirmed"][0] == "counter"
    confirmed = {dict(lbl)["cause"]: v for (n, lbl), v in fams["voxbox_barge_in_confirmed"][1].items()}
    # every cause is present from the start (rate() works from the first scrape)
    assert confirmed == {"near_end_speech": 1, "user_speech": 0, "wake_word": 2, "button_tap": 0,
                         "push_to_talk": 0, "other": 1}

    gauges = {"voxbox_link_up": 1.0, "voxbox_echo_delay_seconds": 0.0125, "voxbox_erl_db": 8.25,
              "voxbox_erle_db": -3.5, "voxbox_selftest_passed": 1.0,
              "voxbox_selftest_timestamp_seconds": 1_733_300_000.0, "voxbox_uptime_seconds": 90.0,
              "voxbox_start_time_seconds": 1_733_390_000.0}
    for name, want in gauges.items():
        assert fams[name][0] == "gauge", name
        assert value(fams, name) == pytest.approx(want), name
    states = {dict(lbl)["state"]: v for (n, lbl), v in fams["voxbox_link_state"][1].items()}
    assert states == {s: (1.0 if s == "up" else 0.0) for s in LINK_STATES}
    # an info metric is a gauge named *_info in the text format
    assert fams["voxbox_build_info"][0] == "gauge"
    assert value(fams, "voxbox_build_info", version="1.2.3") == 1.0

    # naming: voxbox_ prefix, every family documented, no _created series, no unit label
    for name, (typ, samples, doc) in fams.items():
        assert name.startswith("voxbox_") and doc, name
        for sample_name, labels in samples:
            assert not sample_name.endswith("_created"), sample_name
            assert "unit" not in dict(labels)
    assert sorted(os.listdir(path.parent)) == ["voxbox.prom"]  # no temporary file left
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)  # node_exporter reads it


def test_fresh_metrics_leave_unknown_gauges_out(clocks):
    mono, wall = clocks
    fams = parse(render(UnitMetrics(clock=mono, wall_clock=wall).snapshot()).decode())
    for name in COUNTERS:
        assert value(fams, name, name + "_total") == 0
    assert value(fams, "voxbox_link_up") == 0.0
    assert value(fams, "voxbox_link_state", state="down") == 1.0
    for absent in ("voxbox_echo_delay_seconds", "voxbox_erl_db", "voxbox_erle_db", "voxbox_selftest_passed",
                   "voxbox_selftest_timestamp_seconds"):
        assert absent not in fams


def test_gauges_update_and_reset(clocks):
    mono, wall = clocks
    um = UnitMetrics(clock=mono, wall_clock=wall)
    um.set_echo_delay_ms(10.0)
    um.set_echo_delay_ms(float("nan"))  # a measurement lost: unknown, not NaN in the file
    um.set_erl_db(float("inf"))
    um.set_erle_db(None)
    um.set_link("fatal")
    um.set_selftest("FAIL", None)
    fams = parse(render(um.snapshot()).decode())
    assert "voxbox_echo_delay_seconds" not in fams and "voxbox_erl_db" not in fams
    assert "voxbox_erle_db" not in fams
    assert value(fams, "voxbox_link_up") == 0.0
    assert value(fams, "voxbox_link_state", state="fatal") == 1.0
    assert value(fams, "voxbox_selftest_passed") == 0.0
    assert "voxbox_selftest_timestamp_seconds" not in fams
    um.set_selftest(None)
    assert "voxbox_selftest_passed" not in parse(render(um.snapshot()).decode())


def test_start_time_follows_a_clock_set_after_the_start(clocks):
    """A Pi without a real-time clock boots in the past; NTP sets it later: the start time
    is back-dated from the wall clock by the monotonic uptime at each snapshot."""
    mono, wall = clocks
    wall.t = 1_000_000.0  # wrong date at start
    um = UnitMetrics(clock=mono, wall_clock=wall)
    mono.t += 60.0
    wall.t = 1_733_390_060.0  # NTP synchronised
    snap = um.snapshot()
    assert snap.uptime_s == 60.0 and snap.start_time_s == 1_733_390_000.0


def test_counting_from_several_threads_loses_nothing(clocks):
    um = UnitMetrics(clock=clocks[0], wall_clock=clocks[1])

    def count():
        for _ in range(5000):
            um.on_turn()
            um.on_underrun()

    threads = [threading.Thread(target=count) for _ in range(4)]
    for t in threads:
        t.start()
    for _ in range(50):
        um.snapshot()  # a writer reading meanwhile
    for t in threads:
        t.join()
    snap = um.snapshot()
    assert snap.turns == 20000 and snap.underruns == 20000


def test_bad_arguments_raise_value_error(clocks):
    um = UnitMetrics(clock=clocks[0], wall_clock=clocks[1])
    with pytest.raises(ValueError, match="link state"):
        um.set_link("sideways")
    with pytest.raises(ValueError, match=">= 0"):
        um.on_underrun(-1)
    with pytest.raises(ValueError, match="PASS"):
        um.set_selftest("SKIP", 0.0)


def test_failed_write_keeps_the_previous_file_and_does_not_raise(clocks, tmp_path, monkeypatch):
    um = driven(clocks)
    path = tmp_path / "voxbox.prom"
    w = MetricsWriter(um, path)
    assert w.write()
    before = path.read_bytes()
    um.on_turn()

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)  # the file's fsync in atomic_write
    assert w.write() is False
    assert "No space left on device" in w.error and str(path) in w.error
    assert path.read_bytes() == before  # the scrape still sees the whole previous file
    assert sorted(os.listdir(tmp_path)) == ["voxbox.prom"]  # the temporary file was removed

    monkeypatch.undo()
    assert w.write() is True and w.error is None
    assert value(parse(path.read_text()), "voxbox_turns", "voxbox_turns_total") == 4


def test_unwritable_directory_returns_false(clocks, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    w = MetricsWriter(UnitMetrics(clock=clocks[0], wall_clock=clocks[1]), blocker / "voxbox.prom")
    assert w.write() is False and w.error


def test_write_replaces_by_rename(clocks, tmp_path):
    """A reader holding the old file keeps reading a whole old file: the new one is a new
    inode renamed over it, never the old one truncated and rewritten."""
    um = driven(clocks)
    path = tmp_path / "voxbox.prom"
    w = MetricsWriter(um, path)
    assert w.write()
    with open(path, "rb") as reader:
        old = reader.read()
        inode = os.fstat(reader.fileno()).st_ino
        um.on_turn()
        assert w.write()
        reader.seek(0)
        assert reader.read() == old
    assert path.stat().st_ino != inode
    assert path.read_bytes() != old


def write_selftest(path, result="PASS", when="2024-12-05T10:00:00+0000"):
    d = {"result": result, "version": "0.1.0", "checks": []}
    if when is not None:
        d["time"] = when
    path.write_text(json.dumps(d))


def test_selftest_file_feeds_the_gauges(clocks, tmp_path):
    st = tmp_path / "selftest.json"
    um = UnitMetrics(clock=clocks[0], wall_clock=clocks[1])
    w = MetricsWriter(um, tmp_path / "out" / "voxbox.prom", selftest_path=st)
    assert w.write()
    assert "voxbox_selftest_passed" not in parse((tmp_path / "out" / "voxbox.prom").read_text())

    write_selftest(st, "FAIL")
    assert w.write()
    fams = parse((tmp_path / "out" / "voxbox.prom").read_text())
    assert value(fams, "voxbox_selftest_passed") == 0.0
    assert value(fams, "voxbox_selftest_timestamp_seconds") == 1733392800.0

    write_selftest(st, "PASS", when=None)  # no time: the file's modification time
    os.utime(st, (1_700_000_000, 1_700_000_000))
    assert w.write()
    fams = parse((tmp_path / "out" / "voxbox.prom").read_text())
    assert value(fams, "voxbox_selftest_passed") == 1.0
    assert value(fams, "voxbox_selftest_timestamp_seconds") == 1_700_000_000.0


@pytest.mark.parametrize("content", [b"", b"{", b"[1]", b'{"result": "SKIP"}', b"\xff\xfe", b'{"result": 1}',
                                     b"[" * 100_000])
def test_bad_selftest_file_is_none(tmp_path, content):
    p = tmp_path / "selftest.json"
    p.write_bytes(content)
    assert read_selftest(p) is None
    assert read_selftest(tmp_path / "missing.json") is None


def test_render_is_the_text_format_and_has_no_nan(clocks):
    text = render(driven(clocks).snapshot()).decode("utf-8")
    assert text.endswith("\n")
    for line in text.splitlines():
        if not line.startswith("#"):
            v = float(line.rsplit(" ", 1)[1])
            assert math.isfinite(v), line


@pytest.mark.e2e
def test_the_daemon_writes_the_metrics_file(tmp_path):
    """The real daemon with ``metrics.textfile`` set: after a turn and a dropped link the
    file, parsed by the official parser, counts them; the link gauge follows the link."""
    import time

    from prometheus_client.parser import text_string_to_metric_families

    from voxbox.audio.speech import render_speech
    from voxbox.sim.harness import DaemonHarness

    prom = tmp_path / "textfile" / "voxbox.prom"
    prom.parent.mkdir()

    def values() -> dict[str, float]:
        out = {}
        for fam in text_string_to_metric_families(prom.read_text()):
            for s in fam.samples:
                key = s.name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}"
                                if s.labels else "")
                out[key] = s.value
        return out

    cfg = {"metrics": {"textfile": str(prom), "interval_s": 1.0}}
    with DaemonHarness(tmp_path / "h", echo_db=-20, config=cfg) as h:
        h.start()
        h.wait_for(lambda: prom.exists() and values().get("voxbox_link_up") == 1.0, 10, "link up in the file")
        t0 = time.monotonic()
        h.press()
        h.wait_state("listening", timeout=5, after=t0)
        h.mic.play(render_speech("What time is it?"))
        h.wait_event("turn", timeout=30, after=t0)
        h.wait_for(lambda: values().get("voxbox_turns_total") == 1.0, 5, "the turn in the file")
        t1 = time.monotonic()
        assert h.server.drop_all_connections() >= 1
        h.wait_event("reconnected", timeout=10, after=t1)
        h.wait_for(lambda: values().get("voxbox_reconnects_total", 0) >= 1.0
                   and values().get("voxbox_link_up") == 1.0, 5, "the reconnect in the file")
        v = values()
        assert v["voxbox_wake_words_total"] == 0.0
        assert v["voxbox_barge_in_rejected_total"] == 0.0
        assert v['voxbox_link_state{state=up}'] == 1.0
        assert v["voxbox_uptime_seconds"] > 0
        # the reply's echo (-20 dB) was cancelled: ERLE over the far-end periods
        print(f"ERLE {v['voxbox_erle_db']:.1f} dB, echo delay {v.get('voxbox_echo_delay_seconds')} s")
        assert v["voxbox_erle_db"] > 6.0
        assert h.stop_daemon() == 0
    assert leftovers(prom.parent, keep="voxbox.prom") == []  # no temp file left
