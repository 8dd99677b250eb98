"""The test fault hook fires only with MLXD_TEST_FAULT_ALLOWED=1 beside MLXD_TEST_FAULT
(set by a debug daemon), never from the hook variable alone."""

import pytest

from mlxd_runtime import faults


def test_the_hook_alone_is_inert(monkeypatch):
    monkeypatch.setenv("MLXD_TEST_FAULT", "embed:raise")
    monkeypatch.delenv("MLXD_TEST_FAULT_ALLOWED", raising=False)
    faults.maybe_fail("embed")
    monkeypatch.setenv("MLXD_TEST_FAULT_ALLOWED", "0")
    faults.maybe_fail("embed")


def test_the_hook_fires_when_allowed(monkeypatch):
    monkeypatch.setenv("MLXD_TEST_FAULT", "embed:raise")
    monkeypatch.setenv("MLXD_TEST_FAULT_ALLOWED", "1")
    with pytest.raises(RuntimeError, match="test fault injected at embed"):
        faults.maybe_fail("embed")
    faults.maybe_fail("load")  # another stage is untouched


def test_answer_changing_faults_need_the_gate_too(monkeypatch):
    monkeypatch.setenv("MLXD_TEST_FAULT", "embed:short,detokenize:huge")
    monkeypatch.delenv("MLXD_TEST_FAULT_ALLOWED", raising=False)
    assert not faults.wants("embed", "short")
    monkeypatch.setenv("MLXD_TEST_FAULT_ALLOWED", "1")
    assert faults.wants("embed", "short") and faults.wants("detokenize", "huge")
    assert not faults.wants("embed", "huge")
