"""The pytest plugin, through pytest itself: test files of their own, run by ``pytester``."""

from __future__ import annotations

from pathlib import Path

import pytest
import starlette.testclient  # noqa: F401 - see below

# Imported here, before pytester's in-process runs snapshot sys.modules: a run drops the
# modules it imported, and a later run would then mix a new Starlette with the old
# maintguard.starlette (still an attribute of the maintguard package).
import maintguard.starlette  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestAssertRewriteWarning")

_INI = """
[pytest]
asyncio_default_fixture_loop_scope = function
filterwarnings =
    error
    ignore:Using `httpx` with:starlette.exceptions.StarletteDeprecationWarning
"""


@pytest.fixture
def inner(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(_INI)
    return pytester


def test_the_fixture_switches_holds_and_shows_a_fresh_default(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import maintguard
        from maintguard import sync
        from maintguard.backends import MemoryBackend

        def test_off_at_first(maintenance):
            assert isinstance(maintenance.backend, MemoryBackend)
            assert not maintenance.active
            assert not sync.get_maintenance_mode()  # the fixture's store is the default

        def test_on_and_off(maintenance):
            maintenance.on(reason="DB upgrade", retry_after=600, until=3600)
            state = maintenance.state
            assert state.active and state.reason == "DB upgrade" and state.retry_after == 600
            assert state.until is not None
            assert sync.get_state().reason == "DB upgrade"
            maintenance.off()
            assert not maintenance.active

        def test_scopes_and_modes(maintenance):
            maintenance.on(scope="billing", mode="read_only")
            assert not maintenance.active
            billing = maintenance.state_of("billing")
            assert billing.active and billing.mode.value == "read_only"
            maintenance.off(scope="billing")
            assert not maintenance.state_of("billing").active

        def test_a_hold_shows_while_entered(maintenance):
            with maintenance.hold(reason="reindex"):
                assert maintenance.state.reason == "reindex"
                assert sync.get_maintenance_mode()
            assert not maintenance.active

        def test_hold_without_backend_refused(maintenance):
            import pytest
            from maintguard import ConfigurationError, MemoryBackend
            with pytest.raises(ConfigurationError, match="under_maintenance"):
                maintenance.hold(backend=MemoryBackend())
        """.replace("MemoryBackend()", "maintguard.backends.MemoryBackend()").replace(
            "from maintguard import ConfigurationError, MemoryBackend",
            "from maintguard import ConfigurationError",
        )
    )
    inner.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=5)


def test_no_state_leaks_between_tests_and_the_previous_default_returns(
    inner: pytest.Pytester,
) -> None:
    inner.makepyfile(
        """
        import maintguard
        from maintguard import sync
        from maintguard.backends import MemoryBackend

        mine = MemoryBackend()

        def test_1_sets_a_default_then_switches_on(maintenance):
            maintenance.on(reason="left on")

        def test_2_is_off_again(maintenance):
            assert not maintenance.active
            assert not sync.get_maintenance_mode()

        def test_3_a_configured_default_is_put_back():
            maintguard.configure(mine)

        def test_4_uses_the_fixture_store(maintenance):
            assert sync.get_state().active is False
            maintenance.on()
            assert not sync.get_maintenance_mode(mine)

        def test_5_the_configured_default_is_back():
            from maintguard._core import resolve_backend
            assert resolve_backend() is mine
        """
    )
    inner.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=5)


def test_configure_in_a_test_does_not_leak_into_the_next(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import maintguard
        from maintguard import sync
        from maintguard.backends import MemoryBackend
        from maintguard._core import resolve_backend

        outer = MemoryBackend()
        inner_store = MemoryBackend()

        def test_0_a_default_before():
            maintguard.configure(outer)

        def test_1_configures_inside(maintenance):
            maintguard.configure(inner_store)
            assert resolve_backend() is inner_store
            maintenance.on()  # the fixture's store, whatever the default is now
            assert maintenance.active and not sync.get_maintenance_mode()

        def test_2_fresh(maintenance):
            assert resolve_backend() is maintenance.backend
            assert not sync.get_maintenance_mode()

        def test_3_the_default_from_before_is_back():
            assert resolve_backend() is outer
            maintguard.configure(None)
        """
    )
    inner.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=4)


def test_the_same_session_twice_in_one_process(inner: pytest.Pytester) -> None:
    # As a runner that reuses its worker process (xdist-like) would: no state carries over.
    inner.makepyfile(
        """
        import pytest
        from maintguard import sync, under_maintenance

        hold = under_maintenance(reason="module-level object")

        @pytest.mark.maintenance(reason="marked")
        def test_marked():
            assert sync.get_state().reason == "marked"

        def test_module_level_hold_object(maintenance):
            with hold:
                assert maintenance.state.reason == "module-level object"
            assert not maintenance.active

        def test_leaks(maintenance):
            hold.__enter__()

        def test_off_again():
            assert not sync.get_maintenance_mode()
        """
    )
    for _ in range(2):
        inner.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=4, errors=1)


def test_the_marker_switches_on_and_strict_markers_accept_it(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import pytest
        from maintguard import sync

        @pytest.mark.maintenance(reason="DB upgrade", mode="read_only")
        def test_marked():
            state = sync.get_state()
            assert state.active and state.reason == "DB upgrade"
            assert state.mode.value == "read_only"

        @pytest.mark.maintenance("positional reason")
        def test_marked_with_the_fixture_too(maintenance):
            assert maintenance.state.reason == "positional reason"

        @pytest.mark.maintenance(scope="billing")
        def test_marked_scope(maintenance):
            assert not maintenance.active and maintenance.state_of("billing").active

        @pytest.mark.maintenance
        class TestAClass:
            def test_in_a_marked_class(self):
                assert sync.get_maintenance_mode()

        def test_unmarked_is_off():
            assert not sync.get_maintenance_mode()
        """
    )
    inner.runpytest("-p", "no:cacheprovider", "--strict-markers").assert_outcomes(passed=5)
    result = inner.runpytest("-p", "no:cacheprovider", "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.maintenance(reason=None, *, scope=None*"])


def test_a_marker_with_bad_options_is_an_error_that_says_why(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import pytest

        @pytest.mark.maintenance(mode="sideways")
        def test_bad_mode():
            pass

        @pytest.mark.maintenance(reasn="typo")
        def test_bad_keyword():
            pass
        """
    )
    result = inner.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        [
            "*@pytest.mark.maintenance: unknown maintenance mode 'sideways'*",
            "*@pytest.mark.maintenance: *unexpected keyword argument 'reasn'*",
        ]
    )
    assert "During handling" not in result.stdout.str()  # one message, no chained traceback


# Fixed in 40dfdf4: the marker (and maintenance.on()) accept a
# reason that is not a string: @pytest.mark.maintenance(reason=123) or (True) run the test
# with state.reason == 123 instead of the error docs/how-to/testing.md promises for a bad option
def test_a_marker_with_a_non_string_reason_is_an_error(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import pytest

        @pytest.mark.maintenance(reason=123)
        def test_number():
            pass

        @pytest.mark.maintenance(True)
        def test_bool():
            pass
        """
    )
    result = inner.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*@pytest.mark.maintenance: *reason*"])


# Fixed in 40dfdf4: an until too far ahead (until=1e300,
# timedelta.max) raises OverflowError in check_until, which the fixture does not catch: a
# raw traceback instead of '@pytest.mark.maintenance: ...' naming the option
def test_a_marker_with_an_until_beyond_the_calendar_says_which_option(
    inner: pytest.Pytester,
) -> None:
    inner.makepyfile(
        """
        from datetime import timedelta
        import pytest

        @pytest.mark.maintenance(until=1e300)
        def test_seconds():
            pass

        @pytest.mark.maintenance(until=timedelta.max)
        def test_timedelta():
            pass
        """
    )
    result = inner.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*@pytest.mark.maintenance: *until*"] * 2)
    assert "OverflowError" not in result.stdout.str()


def test_markers_with_odd_arguments_are_errors_that_say_why(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import pytest

        @pytest.mark.maintenance("a", "b")
        def test_two_positional():
            pass

        @pytest.mark.maintenance(scope="")
        def test_empty_scope():
            pass

        @pytest.mark.maintenance(mode=None)
        def test_no_mode():
            pass

        @pytest.mark.maintenance(until=-1)
        def test_past():
            pass

        @pytest.mark.maintenance(retry_after=float("nan"))
        def test_nan():
            pass

        @pytest.mark.maintenance(backend="memory:")
        def test_backend():
            pass

        @pytest.mark.maintenance(scope=["billing"])
        def test_list_scope():
            pass
        """
    )
    result = inner.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=7)
    assert result.stdout.str().count("@pytest.mark.maintenance: ") >= 7
    assert "Traceback" not in result.stdout.str()


def test_a_hold_left_entered_fails_the_test_at_teardown_naming_it(
    inner: pytest.Pytester,
) -> None:
    inner.makepyfile(
        """
        from maintguard import sync, under_maintenance

        def test_leaks(maintenance):
            hold = maintenance.hold(reason="forgotten")
            hold.__enter__()

        def test_leaks_on_the_default_in_a_scope(maintenance):
            under_maintenance(scope="billing").__enter__()

        def test_after_a_leak_all_is_off(maintenance):
            assert not maintenance.active
            assert not maintenance.state_of("billing").active
            assert not sync.get_maintenance_mode()
        """
    )
    result = inner.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaks *",
            "*the test left 1 maintenance hold entered: the hold made at *"
            "test_a_hold_left_entered_fails_the_test_at_teardown_naming_it.py:4 "
            "(reason 'forgotten'). Exit every hold*",
            "*ERROR at teardown of test_leaks_on_the_default_in_a_scope *",
            "*the hold made at *.py:8 (scope 'billing')*",
        ]
    )


def test_leaks_in_threads_generators_and_drains_are_reported_and_released(
    inner: pytest.Pytester,
) -> None:
    inner.makepyfile(
        """
        import threading, time
        import pytest
        from maintguard import not_during_maintenance, sync, under_maintenance

        stop = threading.Event()
        keep = []

        def test_thread(maintenance):
            entered = threading.Event()
            def worker():
                with maintenance.hold(reason="thread"):
                    entered.set()
                    stop.wait(10)
            threading.Thread(target=worker, daemon=True).start()
            entered.wait(5)

        def test_suspended_generator(maintenance):
            @under_maintenance(reason="gen")
            def gen():
                yield 1
                yield 2
            g = gen()
            next(g)
            keep.append(g)

        def test_suspended_async_generator(maintenance):
            import asyncio
            @maintenance.hold(reason="agen")
            async def agen():
                yield 1
                yield 2
            g = agen()
            loop = asyncio.new_event_loop()
            loop.run_until_complete(g.__anext__())
            keep.append((g, loop))

        def test_drained(maintenance):
            maintenance.hold(reason="drained", drain=0.05).__enter__()

        def test_stuck_in_its_drain(maintenance):
            started, go = threading.Event(), threading.Event()
            keep.append(go)
            def job():
                with not_during_maintenance():
                    started.set()
                    go.wait(10)
            def drainer():
                with maintenance.hold(reason="draining", drain=3):
                    pass
            threading.Thread(target=job, daemon=True).start()
            started.wait(5)
            threading.Thread(target=drainer, daemon=True).start()
            deadline = time.monotonic() + 5
            while maintenance.state.phase.value != "draining":
                assert time.monotonic() < deadline
                time.sleep(0.01)

        def test_nested_entries_of_one_object(maintenance):
            hold = maintenance.hold(reason="twice")
            hold.__enter__()
            hold.__enter__()

        def test_the_leakers_exit_late_without_errors(maintenance):
            stop.set()
            keep[0].close()  # the suspended generator closes now: its hold was released
            g, loop = keep[1]
            loop.run_until_complete(g.aclose())
            loop.close()
            keep[2].set()
            time.sleep(0.2)
            assert not maintenance.active
            assert not sync.get_maintenance_mode()
        """
    )
    result = inner.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=7, errors=6)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_thread*",
            "*the test left 1 maintenance hold entered: the hold made at *(reason 'thread')*",
            "*(reason 'gen')*",
            "*(reason 'agen')*",
            "*(reason 'drained')*",
            "*(reason 'draining')*",
            "*(reason 'twice')*",
        ]
    )


def test_a_task_the_loop_cancels_at_the_end_is_no_false_leak(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import asyncio
        import pytest

        seen = []

        @pytest.fixture(params=["asyncio"])
        def anyio_backend(request):
            return request.param

        async def job(maintenance):
            try:
                async with maintenance.hold(reason="task"):
                    await asyncio.sleep(30)
            finally:
                seen.append(maintenance)

        @pytest.mark.asyncio
        async def test_pytest_asyncio(maintenance):
            seen.append(asyncio.ensure_future(job(maintenance)))
            await asyncio.sleep(0.01)

        @pytest.mark.anyio
        async def test_anyio(maintenance, anyio_backend):
            seen.append(asyncio.ensure_future(job(maintenance)))
            await asyncio.sleep(0.01)

        def test_the_tasks_ended_and_released():
            helpers = [s for s in seen if not isinstance(s, asyncio.Future)]
            assert len(helpers) == 2
            assert not any(h.active for h in helpers)
        """
    )
    inner.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=3)


def test_a_background_jobs_hold_is_no_leak_of_the_test_and_is_left_alone(
    inner: pytest.Pytester,
) -> None:
    inner.makepyfile(
        """
        import threading, time
        import pytest
        from maintguard import sync, under_maintenance
        from maintguard.backends import MemoryBackend

        JOBS = MemoryBackend()  # the scheduler's own store (a file or Redis in real life)
        seen = {"entries": 0, "inside": False, "lost": []}

        @pytest.fixture(scope="session")
        def scheduler():
            stop = threading.Event()
            def loop():
                hold = under_maintenance(backend=JOBS, reason="nightly job")
                while not stop.is_set():
                    with hold:  # a job of 1 s, held all along
                        seen["entries"] += 1
                        seen["inside"] = True
                        for _ in range(100):
                            time.sleep(0.01)
                            if not sync.get_maintenance_mode(JOBS):
                                seen["lost"].append(seen["entries"])
                                break
                        seen["inside"] = False
                    time.sleep(0.01)
            thread = threading.Thread(target=loop, daemon=True)
            thread.start()
            yield
            stop.set()
            thread.join(5)

        def test_holds_nothing_itself(scheduler, maintenance):
            start = seen["entries"]
            while not (seen["entries"] > start and seen["inside"]):  # a job began meanwhile
                time.sleep(0.005)

        def test_the_job_kept_its_maintenance(scheduler):
            time.sleep(0.2)
            assert seen["lost"] == []
        """
    )
    inner.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_async_tests_under_anyio_asyncio_and_trio_and_pytest_asyncio(
    inner: pytest.Pytester,
) -> None:
    inner.makepyfile(
        """
        import pytest
        import maintguard

        @pytest.fixture(params=["asyncio", "trio"])
        def anyio_backend(request):
            return request.param

        @pytest.mark.anyio
        async def test_anyio(maintenance, anyio_backend):
            assert not await maintguard.get_maintenance_mode()
            maintenance.on(reason="async")
            assert (await maintguard.get_state()).reason == "async"
            maintenance.off()
            async with maintenance.hold(reason="held"):
                assert maintenance.state.reason == "held"
                assert await maintguard.get_maintenance_mode()
            assert not maintenance.active

        @pytest.mark.anyio
        @pytest.mark.maintenance(reason="marked")
        async def test_anyio_marked(anyio_backend):
            assert (await maintguard.get_state()).reason == "marked"

        @pytest.mark.asyncio
        async def test_pytest_asyncio(maintenance):
            maintenance.on()
            assert await maintguard.get_maintenance_mode()

        @pytest.mark.anyio
        async def test_anyio_leak(maintenance, anyio_backend):
            await maintenance.hold(reason="async leak").__aenter__()
        """
    )
    result = inner.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=7, errors=2)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_anyio_leak[[]asyncio[]]*"])


def test_the_plugin_under_anyio_trio_asyncio_and_pytest_asyncio(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import anyio
        import pytest
        import maintguard
        from maintguard import not_during_maintenance

        @pytest.fixture(params=["asyncio", "trio"])
        def anyio_backend(request):
            return request.param

        @pytest.mark.anyio
        async def test_a_drain_waits_for_a_guarded_job(maintenance, anyio_backend):
            order = []
            release, started = anyio.Event(), anyio.Event()

            @not_during_maintenance()
            async def job():
                started.set()
                await release.wait()
                order.append("job")

            async def drainer():
                async with maintenance.hold(reason="drain", drain=10):
                    order.append("body")

            async with anyio.create_task_group() as tg:
                tg.start_soon(job)
                await started.wait()
                tg.start_soon(drainer)
                with anyio.fail_after(5):
                    while maintenance.state.phase.value != "draining":
                        await anyio.sleep(0.01)
                release.set()
            assert order == ["job", "body"]
            assert not maintenance.active

        @pytest.mark.anyio
        @pytest.mark.maintenance(reason="marked", scope="billing")
        async def test_marker_and_async_generator_hold(anyio_backend, maintenance):
            @maintenance.hold(reason="agen")
            async def agen():
                yield maintenance.state.reason
            async for reason in agen():
                assert reason == "agen"
            assert not maintenance.active
            assert (await maintguard.get_state(scope="billing")).reason == "marked"

        @pytest.mark.anyio
        async def test_cancelled_inside_a_hold(maintenance, anyio_backend):
            with anyio.move_on_after(0.05):
                async with maintenance.hold(reason="cancelled"):
                    await anyio.sleep(10)
            assert not maintenance.active

        @pytest.mark.asyncio
        async def test_pytest_asyncio_sync_hold_in_a_thread(maintenance):
            import asyncio
            def work():
                with maintenance.hold(reason="thread"):
                    return maintenance.state.reason
            assert await asyncio.to_thread(work) == "thread"
            assert not await maintguard.get_maintenance_mode()
        """
    )
    inner.runpytest("-p", "no:cacheprovider", "--strict-markers").assert_outcomes(passed=7)


def test_with_starlette_testclient_and_httpx(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import httpx
        import pytest
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route
        from starlette.testclient import TestClient
        from maintguard import MaintenanceModeMiddleware, exempt

        async def home(request):
            return PlainTextResponse("home")

        @exempt
        async def health(request):
            return PlainTextResponse("ok")

        def make_app():
            app = Starlette(routes=[Route("/", home), Route("/health", health)])
            app.add_middleware(MaintenanceModeMiddleware)
            return app

        @pytest.fixture
        def client(maintenance):
            with TestClient(make_app()) as client:
                yield client

        def test_off_then_on(maintenance, client):
            assert client.get("/").status_code == 200
            maintenance.on(reason="DB upgrade", retry_after=120)
            response = client.get("/", headers={"accept": "application/json"})
            assert response.status_code == 503
            assert response.headers["retry-after"] == "120"
            assert response.json()["detail"] == "DB upgrade"
            assert client.get("/health").status_code == 200

        @pytest.mark.maintenance(reason="marked")
        def test_marked(client):
            assert client.get("/").status_code == 503

        def test_hold(maintenance, client):
            with maintenance.hold():
                assert client.get("/").status_code == 503
            assert client.get("/").status_code == 200

        @pytest.mark.anyio
        @pytest.mark.parametrize("anyio_backend", ["asyncio"])
        async def test_httpx(maintenance, anyio_backend):
            transport = httpx.ASGITransport(app=make_app())
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                assert (await http.get("/")).status_code == 200
                async with maintenance.hold(reason="held"):
                    assert (await http.get("/")).status_code == 503
        """
    )
    inner.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=4)


def test_a_middlewares_default_does_not_outlive_the_test(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route
        from starlette.testclient import TestClient
        from maintguard import MaintenanceModeMiddleware, sync
        from maintguard.backends import MemoryBackend
        from maintguard._core import resolve_backend

        async def home(request):
            return PlainTextResponse("home")

        def make_app(backend=None):
            app = Starlette(routes=[Route("/", home)])
            app.add_middleware(MaintenanceModeMiddleware, backend=backend)
            return app

        def test_1_an_app_with_the_fixtures_store(maintenance):
            with TestClient(make_app(maintenance.backend)) as client:
                maintenance.on()
                assert client.get("/").status_code == 503

        def test_2_no_fixture_no_stale_default():
            assert isinstance(resolve_backend(), type(resolve_backend()))
            assert not isinstance(resolve_backend(), MemoryBackend)
            assert not sync.get_maintenance_mode()

        def test_3_an_app_without_backend_follows_this_tests_store(maintenance):
            with TestClient(make_app()) as client:
                assert client.get("/").status_code == 200
                with maintenance.hold():
                    assert client.get("/").status_code == 503
        """
    )
    inner.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=3)


@pytest.mark.slow
@pytest.mark.processes
def test_importing_the_plugin_imports_neither_starlette_nor_redis(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import sys

        def test_nothing_extra(maintenance):
            maintenance.on()
            assert "starlette" not in sys.modules
            assert "redis" not in sys.modules
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:anyio")
    result.assert_outcomes(passed=1)


def test_a_module_level_marker_and_its_time_options(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import pytest
        from maintguard import sync

        pytestmark = pytest.mark.maintenance(reason="module", retry_after=60, until=3600)

        def test_one():
            state = sync.get_state()
            assert state.reason == "module" and state.retry_after == 60
            assert state.until is not None

        def test_two(maintenance):
            maintenance.off()
            assert not maintenance.active
        """
    )
    inner.runpytest("-p", "no:cacheprovider", "--strict-markers").assert_outcomes(passed=2)


_APP = """
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from maintguard import MaintenanceModeMiddleware, exempt, maintenance_scope

async def home(request):
    return PlainTextResponse("home")

@exempt
async def health(request):
    return PlainTextResponse("ok")

@maintenance_scope("billing")
async def invoices(request):
    return PlainTextResponse("invoices")

def create_app():
    app = Starlette(routes=[
        Route("/", home), Route("/health", health),
        Mount("/billing", routes=[Route("/invoices", invoices)]),
    ])
    app.add_middleware(MaintenanceModeMiddleware)
    return app
"""


def test_the_docs_testing_example_passes(inner: pytest.Pytester) -> None:
    page = (Path(__file__).parents[1] / "docs" / "how-to" / "testing.md").read_text()
    example = page.split("```python", 1)[1].split("```", 1)[0]
    inner.makepyfile(myapp=_APP, test_readme=example)
    inner.runpytest("-p", "no:cacheprovider", "--strict-markers").assert_outcomes(passed=3)


def test_a_test_entering_an_already_entered_hold_again_is_reported_for_that_entry(
    inner: pytest.Pytester,
) -> None:
    inner.makepyfile(
        """
        import pytest
        from maintguard import sync, under_maintenance

        window = under_maintenance(reason="window")  # on the default: the fixture's store

        @pytest.fixture
        def maintenance_window(maintenance):
            with window:
                yield

        def test_enters_the_window_again(maintenance_window):
            window.__enter__()  # counts on the window's own frame, older than the test
            assert sync.get_state().holds == 1

        def test_after_it_all_is_off(maintenance):
            assert not maintenance.active
        """
    )
    result = inner.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*the test left 1 maintenance hold entered*(reason 'window')*"])


@pytest.mark.xfail(
    strict=True,
    reason="KNOWN LIMIT: leak detection judges the fixture's store and the defaults a test "
    "set; a hold on a store of the test's own naming is not judged, since a background "
    "job's holds may be there (the same re-entry on the fixture's store is reported: "
    "test_a_test_entering_an_already_entered_hold_again_is_reported_for_that_entry)",
)
def test_a_leaked_entry_on_an_older_frame_is_reported(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_a_window="""
        import pytest
        from maintguard import under_maintenance
        from maintguard.backends import MemoryBackend

        STORE = MemoryBackend()
        window = under_maintenance(backend=STORE, reason="window")

        @pytest.fixture(scope="module")
        def maintenance_window():
            with window:
                yield

        def test_enters_the_window_again_and_leaves_it(maintenance_window, maintenance):
            window.__enter__()
        """,
        test_b_after="""
        from maintguard import sync
        from test_a_window import STORE

        def test_the_window_is_closed_after_its_module():
            assert not sync.get_maintenance_mode(STORE)
        """,
    )
    result = inner.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)


# Fixed in 40dfdf4: leak detection looks only at the fixture's
# own MemoryBackend: a test that calls maintguard.configure() (here a file store) and leaves
# a hold entered on that default passes, and the hold stays in the store for the next tests
def test_a_leak_on_a_default_configured_in_the_test_is_reported(inner: pytest.Pytester) -> None:
    path = inner.path / "state.json"
    inner.makepyfile(
        f"""
        import maintguard
        from maintguard import sync, under_maintenance
        from maintguard.backends import LocalFileBackend

        PATH = {str(path)!r}

        def test_configures_a_file_store_and_leaks(maintenance):
            maintguard.configure("file:" + PATH)
            under_maintenance(reason="configured").__enter__()

        def test_the_store_is_clean_again():
            assert not sync.get_maintenance_mode(LocalFileBackend(PATH))
        """
    )
    result = inner.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)


def test_a_leak_on_a_default_the_test_configured_is_reported_whoever_resets_it(
    inner: pytest.Pytester, tmp_path: Path
) -> None:
    # A project fixture built on `maintenance` resets the default in its own teardown,
    # which runs before the plugin's: the hold on its file store was never judged, and the
    # next test started with maintenance on. Likewise a default the test replaced.
    state, other = tmp_path / "app.json", tmp_path / "other.json"
    inner.makepyfile(
        f"""
        import pytest
        import maintguard
        from maintguard import sync, under_maintenance
        from maintguard.backends import LocalFileBackend

        APP, OTHER = {str(state)!r}, {str(other)!r}

        @pytest.fixture
        def app_store(maintenance):
            maintguard.configure(backend="file:" + APP)
            yield
            maintguard.configure(backend=None)

        def test_leaks_on_the_fixtures_default(app_store):
            under_maintenance(reason="forgotten").__enter__()

        def test_leaks_on_a_default_it_replaced(maintenance):
            maintguard.configure(backend="file:" + OTHER)
            under_maintenance(reason="replaced").__enter__()
            maintguard.configure(backend=None)

        def test_the_next_test_starts_off(maintenance):
            assert not sync.get_maintenance_mode(LocalFileBackend(APP))
            assert not sync.get_maintenance_mode(LocalFileBackend(OTHER))
        """
    )
    result = inner.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaks_on_the_fixtures_default *",
            f"*the test left 1 maintenance hold entered: the hold made at *.py:15 "
            f"(reason 'forgotten', on LocalFileBackend({state}))*",
            "*ERROR at teardown of test_leaks_on_a_default_it_replaced *",
            f"*the hold made at *.py:19 (reason 'replaced', on LocalFileBackend({other}))*",
        ]
    )
