"""A data import in a plain async script: maintenance is on exactly while it runs.

    python examples/script.py            # asyncio
    python examples/script.py --trio     # the same under trio

Any process that reads the same file (a web app's middleware, `maintguard status`) sees
maintenance on during the import, and off again once it ends, even if the import fails
or is cancelled.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import anyio

from maintguard import get_state, under_maintenance
from maintguard.backends import LocalFileBackend


async def import_customers(backend: LocalFileBackend) -> None:
    async with under_maintenance(backend=backend, reason="importing customers", retry_after=120):
        state = await get_state(backend)
        print(f"maintenance on: {state.reason!r}, {state.holds} hold(s)")
        for batch in range(1, 4):
            await anyio.sleep(0.05)  # stands in for real work
            print(f"  imported batch {batch}/3")
    state = await get_state(backend)
    print(f"maintenance {'on' if state.active else 'off'} after the import")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trio", action="store_true", help="run under trio instead of asyncio")
    parser.add_argument("--state", type=Path, help="the state file (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        backend = LocalFileBackend(args.state or Path(tmp) / "maintenance.json")
        print(f"state file: {backend.path} ({'trio' if args.trio else 'asyncio'})")
        anyio.run(import_customers, backend, backend="trio" if args.trio else "asyncio")


if __name__ == "__main__":
    main()
