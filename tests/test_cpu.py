"""The CPU set-up: threads and glibc's allocator settings."""
import pytest

from harmonize_bids.utils import cpu


class FakeLibc:
    """Records mallopt calls; answers like glibc (1 = accepted)."""

    def __init__(self, answer: int = 1):
        self.calls, self.answer = [], answer

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return self.answer


@pytest.fixture
def fake_libc(monkeypatch):
    libc = FakeLibc()
    monkeypatch.setattr(cpu, "_glibc", lambda: libc)
    monkeypatch.delenv(cpu.OPT_OUT, raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    return libc


def test_tuning_turns_off_mmap_and_raises_the_trim_threshold(fake_libc):
    assert cpu.tune_glibc_malloc() is True
    assert fake_libc.calls == [(-4, 0), (-1, 256 * 1024 ** 2)]


def test_tuning_reports_a_refused_setting(fake_libc):
    fake_libc.answer = 0
    assert cpu.tune_glibc_malloc() is False


@pytest.mark.parametrize("env", [{cpu.OPT_OUT: "1"},
                                 {"LD_PRELOAD": "/usr/lib/libtcmalloc_minimal.so.4"},
                                 {"LD_PRELOAD": "libjemalloc.so.2"}])
def test_tuning_stays_off_when_opted_out_or_another_allocator_is_loaded(fake_libc, monkeypatch,
                                                                        env):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert cpu.tune_glibc_malloc() is False
    assert fake_libc.calls == []


def test_tuning_is_a_no_op_without_glibc(monkeypatch):
    monkeypatch.setattr(cpu, "_glibc", lambda: None)
    monkeypatch.delenv(cpu.OPT_OUT, raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    assert cpu.tune_glibc_malloc() is False


def test_real_glibc_accepts_the_settings(monkeypatch):
    monkeypatch.delenv(cpu.OPT_OUT, raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    if cpu._glibc() is None:
        pytest.skip("not a glibc system")
    assert cpu.tune_glibc_malloc() is True


def test_configure_cpu_sets_threads(fake_libc):
    import torch

    before = torch.get_num_threads()
    try:
        assert cpu.configure_cpu(0) is True  # at least one thread
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
