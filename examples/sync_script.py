"""The same import in plain synchronous code: no event loop anywhere.

    python examples/sync_script.py

The hold is taken, renewed and released by maintguard's background thread while the
`with` block (or the decorated function) runs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from maintguard import under_maintenance
from maintguard.backends import LocalFileBackend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", type=Path, help="the state file (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        backend = LocalFileBackend(args.state or Path(tmp) / "maintenance.json")

        @under_maintenance(backend=backend, reason="rebuilding the search index")
        def rebuild_index() -> int:
            print(f"  holds recorded in {backend.path.name}: {len(stored_holds(backend))}")
            time.sleep(0.1)  # stands in for real work
            return 42

        with under_maintenance(backend=backend, reason="importing customers"):
            print("maintenance on: importing customers")
            print(f"  rebuilt {rebuild_index()} documents")
        print(f"maintenance off, holds recorded: {len(stored_holds(backend))}")


def stored_holds(backend: LocalFileBackend) -> list[object]:
    import json

    return list(json.loads(backend.path.read_text())["holds"])


if __name__ == "__main__":
    main()
