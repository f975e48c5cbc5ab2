"""The hold stack's lazily cleaned key lists: bounded, and rebuilt without losing a frame."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test

from maintguard._core import stack as stack_module
from maintguard._core.stack import HoldStack, Presents, details_of, new_key
from maintguard._state import Mode
from tests.test_properties import HoldStackModel


def test_overlapping_frames_leaving_oldest_first_keep_the_lists_bounded() -> None:
    # Concurrent requests overlap: each frame leaves after the next one entered, so every
    # removal is of a frame below the top. Dead keys must not pile up.
    stack = HoldStack()
    older = new_key()
    stack.push(older, Presents("job", "r0", 1.0, Mode.READ_ONLY), 0.0)
    for i in range(1, 5_000):
        key = new_key()
        reason = f"r{i}" if i % 3 else None
        stack.push(key, Presents("job", reason, 1.0 if i % 2 else None, Mode.FULL), float(i))
        assert stack.remove(older) is not None
        older = key
        frames = len(stack)
        for keys in (stack._order, stack._reasons, stack._retries):
            assert len(keys) <= 2 * frames + stack_module._SLACK + 1
    details = details_of(stack)
    assert details is not None
    assert details.acquired == details.started == 4_999.0
    assert details.reason == "r4999"
    assert details.retry_after == 1.0
    assert details.mode is Mode.FULL


def test_frames_leaving_from_the_middle_are_rebuilt_out() -> None:
    stack = HoldStack()
    keys = [new_key() for _ in range(200)]
    for i, key in enumerate(keys):
        stack.push(key, Presents("job", f"r{i}", None, Mode.FULL), float(i))
    for key in keys[1:-1]:  # every frame but the oldest and the newest
        stack.remove(key)
    assert len(stack._order) - stack._head <= 2 * 2 + stack_module._SLACK + 1
    assert len(stack._reasons) <= 2 * 2 + stack_module._SLACK + 1
    stack.remove(keys[-1])
    details = details_of(stack)
    assert details is not None
    assert (details.reason, details.started, details.acquired) == ("r0", 0.0, 0.0)


def test_the_stack_model_with_a_rebuild_at_every_chance(monkeypatch: pytest.MonkeyPatch) -> None:
    # With no slack, a list is rebuilt at nearly every removal from the middle: what the
    # stack presents must still follow the model.
    monkeypatch.setattr(stack_module, "_SLACK", 0)
    run_state_machine_as_test(
        HoldStackModel,
        settings=settings(max_examples=150, stateful_step_count=40, deadline=None),
    )
