"""Every benchmark under bench/ still imports: a script whose import rotted (a helper moved,
renamed) would only be found the next time someone records its figures."""

from pathlib import Path

import pytest

from tests.bench_scripts import BENCH, load_bench_script


@pytest.mark.parametrize("script", sorted(BENCH.glob("*.py")), ids=lambda path: path.name)
def test_a_benchmark_imports_and_has_a_main(script: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))  # as `python bench/X.py` has it: X's siblings
    module = load_bench_script(script, f"bench_{script.stem}")  # runs nothing but imports
    assert callable(module.main)
