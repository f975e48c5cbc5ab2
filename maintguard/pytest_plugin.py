"""The pytest plugin, registered as ``maintguard`` (``pytest11`` entry point).

- Fixture ``maintenance``: the test gets a fresh :class:`~maintguard.backends.MemoryBackend`
  as the process default (the previous default comes back afterwards) and a
  :class:`Maintenance` to switch it, hold it and look at it.
- Marker ``@pytest.mark.maintenance(reason=..., scope=..., mode=...)``: the test runs with
  maintenance switched on, through that fixture.
- A test that leaves a hold entered fails at teardown, naming the hold.

Everything works from sync tests and from async tests (anyio under asyncio or trio,
pytest-asyncio) alike: the memory backend answers at once, in the caller.
Importing this module imports neither Starlette nor Redis.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from . import _holds as guards
from . import _ioloop as ioloop
from ._core import ScopeController, Store, defaults, store_of
from ._core.registry import all_stores
from ._core.stack import Presents
from ._holds import MaintenanceHold, Seconds
from ._state import MaintenanceState, Mode
from .backends import MemoryBackend
from .exceptions import ConfigurationError

__all__ = ["Maintenance", "maintenance"]

_MARKER = (
    "maintenance(reason=None, *, scope=None, mode='full', retry_after=None, until=None): "
    "run the test with maintenance switched on (maintguard's `maintenance` fixture)"
)


class Maintenance:
    """What the ``maintenance`` fixture gives a test: its own store, switched and held here.

    >>> def test_page_is_503(maintenance, client):
    ...     maintenance.on(reason="DB upgrade")
    ...     assert client.get("/").status_code == 503
    """

    def __init__(self, backend: MemoryBackend) -> None:
        self.backend = backend
        """The test's fresh store; it is also the process default while the test runs."""

    def on(
        self,
        reason: str | None = None,
        *,
        scope: str | None = None,
        mode: Mode | str = "full",
        retry_after: Seconds | None = None,
        until: Seconds | None = None,
    ) -> None:
        """Switch maintenance on (the explicit state), as an operator would."""
        ioloop.run_inline(
            guards.set_maintenance_mode(
                True,
                self.backend,
                scope=scope,
                reason=reason,
                retry_after=retry_after,
                until=until,
                mode=mode,
            )
        )

    def off(self, *, scope: str | None = None) -> None:
        """Switch the explicit state off; holds still entered keep maintenance on."""
        ioloop.run_inline(guards.set_maintenance_mode(False, self.backend, scope=scope))

    def hold(self, **options: Any) -> MaintenanceHold:
        """A hold on the test's store: ``under_maintenance(**options)`` without ``backend=``."""
        if "backend" in options:
            raise ConfigurationError(
                "maintenance.hold() holds the fixture's own store: for another backend "
                "use under_maintenance(backend=...)"
            )
        return MaintenanceHold(backend=self.backend, **options)

    def state_of(self, scope: str | None) -> MaintenanceState:
        """The effective state of ``scope`` (a named scope also follows the global one)."""
        return ioloop.run_inline(guards.get_state(self.backend, scope))

    @property
    def state(self) -> MaintenanceState:
        """The effective state of the global scope."""
        return self.state_of(None)

    @property
    def active(self) -> bool:
        """True while maintenance is on in the global scope."""
        return self.state.active

    def __repr__(self) -> str:
        return f"<Maintenance active={self.active}>"


Entries = dict[ScopeController, dict[int, tuple[int, Presents]]]


def _entries() -> Entries:
    return {ctrl: ctrl.entries() for store in all_stores() for ctrl in store.controllers()}


def _release_leaked(before: Entries, own: Store, stores: Iterable[Store]) -> list[str]:
    # The entries a test made and left, on the stores it used (the fixture's, a default
    # it configured): named, then ended. A background job's holds on a store of its own,
    # and entries older than the test, are not the test's.
    leaked = []
    for store in set(stores):
        for ctrl in store.controllers():
            earlier = before.get(ctrl, {})
            for key, (count, presents) in ctrl.entries().items():
                extra = count - earlier.get(key, (0, None))[0]
                if extra <= 0:
                    continue
                details = [] if presents.reason is None else [f"reason {presents.reason!r}"]
                if ctrl.scope is not None:
                    details.append(f"scope {ctrl.scope!r}")
                if store is not own:
                    details.append(f"on {store.backend.describe()}")
                shown = f" ({', '.join(details)})" if details else ""
                leaked += [f"the hold made at {presents.owner}{shown}"] * extra
                ctrl.end_entries(key, extra)
    return leaked


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", _MARKER)


@pytest.fixture
def maintenance(request: pytest.FixtureRequest) -> Iterator[Maintenance]:
    """A fresh in-memory maintenance state as the process default, for this test only."""
    saved = defaults.chosen()
    before = _entries()
    helper = Maintenance(MemoryBackend())
    used = defaults.record()  # every default chosen from now to teardown, in any order
    defaults.restore((helper.backend, None))
    try:
        marker = request.node.get_closest_marker("maintenance")
        if marker is not None:
            bad = None
            try:
                helper.on(*marker.args, **marker.kwargs)
            except (TypeError, ConfigurationError) as exc:
                bad = f"@pytest.mark.maintenance: {exc}"
            if bad is not None:  # failed outside the handler: no chained traceback
                pytest.fail(bad, pytrace=False)
        yield helper
    finally:
        defaults.stop_recording(used)
        defaults.restore(saved)
    own = store_of(helper.backend)
    leaked = _release_leaked(before, own, [own, *(store_of(b) for b in used)])
    if leaked:
        pytest.fail(
            f"the test left {len(leaked)} maintenance hold{'s' if len(leaked) != 1 else ''} "
            f"entered: {'; '.join(leaked)}. Exit every hold the test enters (a `with` or "
            "`async with` block, a decorated call that returns, a generator closed); "
            "released now.",
            pytrace=False,
        )


@pytest.fixture(autouse=True)
def _maintguard_marker(request: pytest.FixtureRequest) -> None:
    # The marker works without naming the fixture.
    if request.node.get_closest_marker("maintenance") is not None:
        request.getfixturevalue("maintenance")
