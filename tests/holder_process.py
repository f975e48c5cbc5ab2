"""Run by tests in separate OS processes: hold, loop or read a store on command.

``holder_process.py COMMAND STORE FOLDER NAME [LEASE] [DRAIN]``: STORE as tests/stores.py
names it; FOLDER holds the files through which the test and the process talk."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from maintguard import under_maintenance
from tests.stores import open_store


def wait_for(path: Path, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while not path.exists():
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {path}")
        time.sleep(0.01)


def main() -> None:
    command, store, where, name, *rest = sys.argv[1:]
    folder = Path(where)
    state_file = store.partition(":")[2]
    lease = float(rest[0]) if rest else 30.0
    if command == "drain":  # a drained hold: note when its body starts, hold until told
        backend = open_store(store, lease_ttl=lease, refresh_interval=0.2)
        with under_maintenance(backend=backend, reason=name, drain=float(rest[1])):
            (folder / f"body-{name}").write_text(repr(time.time()))
            wait_for(folder / f"leave-{name}")
        return
    backend = open_store(store, lease_ttl=lease, refresh_interval=0)
    if command == "skewed":  # hold with this process's wall clock an hour behind
        import time_machine

        with (
            time_machine.travel(time.time() - 3600, tick=True),
            under_maintenance(backend=backend, reason=name),
        ):
            (folder / f"entered-{name}").touch()
            wait_for(folder / f"leave-{name}")
        return
    if command == "hold":  # hold until told to leave
        with under_maintenance(backend=backend, reason=name):
            (folder / f"entered-{name}").touch()
            wait_for(folder / f"leave-{name}")
    elif command == "churn":  # many short holds, then one held until told to leave
        for _ in range(25):
            with under_maintenance(backend=backend, reason=name):
                pass
        with under_maintenance(backend=backend, reason=name):
            (folder / f"entered-{name}").touch()
            wait_for(folder / "leave-all")
    elif command == "read":  # parse the file strictly until told to stop; report torn reads
        reads = torn = 0
        while not (folder / "leave-all").exists():
            try:
                text = Path(state_file).read_text()
            except FileNotFoundError:
                continue
            reads += 1
            try:
                json.loads(text)
            except ValueError:
                torn += 1
        print(json.dumps({"reads": reads, "torn": torn}))


if __name__ == "__main__":
    main()
