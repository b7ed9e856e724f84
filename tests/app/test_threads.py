"""``--threads auto`` (curvprobe.app.threads): the rule, its readings, and the command line."""

from __future__ import annotations

import json

import pytest
import torch
from test_cli import SMALL, assert_one_line_error, cli

from curvprobe.app import threads

SMALL_AUTO = SMALL[:-2]  # SMALL without its "--threads 1"


# ------------------------------------------------------------------ the rule
@pytest.mark.parametrize(("usable", "others", "expected"), [
    (2, 0.0, 2),     # free machine: a thread per CPU
    (2, 0.2, 2),     # a little background work still counts as free
    (2, 0.8, 1),     # another process holds most of a CPU
    (2, 1.0, 1),
    (2, 6.0, 1),     # oversubscribed: never fewer than one
    (8, 3.0, 5),
    (8, 2.6, 5),     # floor(8 - 2.6 + 0.3) = 5
    (8, 2.7, 5),
    (8, 2.69, 5),
    (8, 1.6, 6),
    (1, 0.0, 1),
    (4, -1.0, 4),    # a negative reading (own threads over-subtracted) counts as zero
])
def test_choose_threads(usable, others, expected):
    assert threads.choose_threads(usable, others) == expected


@pytest.mark.parametrize(("allowed", "quota", "ranks", "expected"), [
    (8, None, 1, 8),
    (8, 2.0, 1, 2),     # cgroup quota of 2 CPUs
    (8, 2.5, 1, 3),     # a fractional quota rounds up
    (2, 16.0, 1, 2),    # affinity is the tighter limit
    (8, None, 4, 2),    # four torchrun ranks share the machine
    (2, None, 4, 1),
    (8, 0.5, 1, 1),
])
def test_usable_cpus(allowed, quota, ranks, expected):
    assert threads.usable_cpus(allowed, quota, ranks) == expected


def test_cgroup_quota_v2_v1_and_unlimited(tmp_path):
    assert threads.parse_cpu_max("max 100000") is None
    assert threads.parse_cpu_max("150000 100000\n") == 1.5
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("200000 100000\n")
    assert threads.cpu_quota(v2) == 2.0
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cpu_quota(tmp_path / "v1") == 3.0
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert threads.cpu_quota(tmp_path / "v1") is None
    assert threads.cpu_quota(tmp_path / "nothing") is None


def test_proc_stat_ticks_count_only_the_allowed_cpus(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 100 800 0 0 0 0 0 0\n"
                    "cpu0 50 0 50 0 0 0 0 0 0 0\n"        # fully busy
                    "cpu1 0 0 0 90 10 0 0 0 0 0\n"        # idle and iowait
                    "cpu2 10 0 0 80 0 0 0 10 0 0\n"       # steal counts as busy
                    "intr 12345\n")
    assert threads._cpu_ticks({0, 1}, stat) == (100.0, 200.0)
    assert threads._cpu_ticks({1, 2}, stat) == (20.0, 200.0)
    assert threads._cpu_ticks({7}, stat) is None


@pytest.mark.parametrize(("text", "expected"), [("auto", "auto"), ("AUTO", "auto"), ("3", 3), ("1", 1)])
def test_parse_threads(text, expected):
    assert threads.parse_threads(text) == expected


@pytest.mark.parametrize("text", ["0", "-2", "two", ""])
def test_parse_threads_refuses(text):
    with pytest.raises(ValueError, match="--threads must be"):
        threads.parse_threads(text)


# ------------------------------------------------------------------ the decision from its readings
def _machine(monkeypatch, *, cpus=4, quota=None, load=0.0, instant=0.0, probe=(2e-3, 1e-3)):
    monkeypatch.setattr(threads, "affinity", lambda: set(range(cpus)))
    monkeypatch.setattr(threads, "cpu_quota", lambda root: quota)
    monkeypatch.setattr(threads, "load_average", lambda: load)
    monkeypatch.setattr(threads, "busy_others", lambda cpus, seconds: instant)
    monkeypatch.setattr(threads, "probe_seconds", lambda n: probe)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)


@pytest.mark.parametrize(("machine", "expected"), [
    ({}, 4),                                        # free 4-CPU machine
    ({"quota": 2.0}, 2),                            # container quota
    ({"cpus": 2, "load": 1.0}, 1),                  # a parallel job on one of two CPUs (lagging reading)
    ({"cpus": 2, "instant": 1.9}, 1),               # ... a job that started too recently for the load
    ({"cpus": 8, "load": 3.0, "instant": 1.0}, 5),  # the larger reading counts
    ({"cpus": 4, "probe": (1e-3, 1.2e-3)}, 1),      # threads measured slower: one
])
def test_decide(monkeypatch, machine, expected):
    _machine(monkeypatch, **machine)
    decision = threads.decide()
    assert decision.threads == expected
    assert decision.describe().startswith(f"threads: auto → {expected}; ")


def test_decide_subtracts_own_threads_from_the_load(monkeypatch):
    _machine(monkeypatch, cpus=2, load=2.0)
    assert threads.decide(own_threads=0).threads == 1
    assert threads.decide(own_threads=2).threads == 2  # the load was our own two threads


def test_decide_divides_among_local_ranks(monkeypatch):
    _machine(monkeypatch, cpus=4)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert threads.decide().threads == 2


def test_between_stages_follows_the_load_and_says_changes(monkeypatch):
    before = torch.get_num_threads()
    said: list[str] = []
    try:
        _machine(monkeypatch, cpus=2)
        auto = threads.start_auto()
        assert auto.decision.threads == 2 and torch.get_num_threads() == 2
        auto.announce(said.append)
        _machine(monkeypatch, cpus=2, instant=1.5)  # a parallel job starts
        assert auto.between_stages() == 1
        _machine(monkeypatch, cpus=2, instant=1.5)
        assert auto.between_stages() == 1        # unchanged: said once
        assert [line.split(";")[0] for line in said] == ["threads: auto → 2", "threads: auto → 1"]
    finally:
        torch.set_num_threads(before)


def test_readings_on_this_machine():
    cpus = threads.affinity()
    others = threads.busy_others(cpus, 0.05)
    assert others is None or 0.0 <= others <= len(cpus) + 0.5
    one, many = threads.probe_seconds(2, repeats=1)
    assert one > 0 and many > 0


# ------------------------------------------------------------------ the command line
def test_cli_threads_auto_and_explicit(env, tmp_path):
    auto = cli(["probe", *SMALL_AUTO, "--ks", "4,8", "--out", str(tmp_path / "auto")], env)
    assert auto.returncode == 0, auto.stderr
    lines = [line for line in auto.stderr.splitlines() if line.startswith("threads: auto → ")]
    assert len(lines) >= 1 and "usable CPUs" in lines[0], auto.stderr
    parts = json.loads((tmp_path / "auto" / "timings.json").read_text())["parts"]
    assert all(p["torch_threads"] >= 1 for p in parts.values())
    one = cli(["probe", *SMALL_AUTO, "--ks", "4,8", "--threads", "1", "--out", str(tmp_path / "one")], env)
    assert one.returncode == 0, one.stderr
    assert "threads: auto" not in one.stderr
    parts = json.loads((tmp_path / "one" / "timings.json").read_text())["parts"]
    assert {p["torch_threads"] for p in parts.values()} == {1}


@pytest.mark.parametrize(("value", "needle"), [("0", "--threads must be >= 1, got 0"),
                                               ("-3", "--threads must be >= 1, got -3"),
                                               ("many", "'auto' or an integer")])
def test_cli_bad_threads_exit_2(env, tmp_path, value, needle):
    assert_one_line_error(cli(["probe", *SMALL_AUTO, "--threads", value, "--out", str(tmp_path / "x")], env),
                          needle)
    assert not (tmp_path / "x").exists()


def test_info_shows_what_auto_picks(env):
    result = cli(["info"], env)
    assert result.returncode == 0, result.stderr
    assert "--threads auto would pick now: " in result.stdout and "usable CPUs" in result.stdout
