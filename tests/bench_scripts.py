"""Loading a script under bench/ as a module, for the tests of its helpers: bench/ is not a
package the tests import from, and each script imports its siblings as `python bench/X.py`
would (the caller puts bench/ on sys.path)."""

import importlib.util
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_bench_script(script: Path, name: str) -> ModuleType:
    """Execute `script` as module `name` (its `__main__` block does not run)."""
    spec = importlib.util.spec_from_file_location(name, script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
