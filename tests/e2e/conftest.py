"""The end-to-end tests in two lanes for `pytest -n 2 --dist loadgroup` (`make test`).

Each lane runs on one xdist worker, its tests one after another, the two lanes side by side and
the unit tests wherever a worker is free. The tests spend most of their time waiting on
Flower's polling, so two at once nearly halve the suite's wall time on two cores. The lanes
are balanced by duration, and they keep the two tests that load the CPU hardest (the
Simulation Engine's 50 virtual devices, the chaos run's round deadlines) in the same lane, so
those two never overlap. Every test still starts its own processes on its own free ports and
stops them by pid, so which lane it runs in changes nothing but when.
"""

import pytest

# Seconds each file took in a fresh clone's `make test` on 2 cores, the lanes side by side:
# lane a 735, lane b 712; the unit tests (about 3 minutes of one worker) fill whichever is free.
LANES = {
    "test_chaos": "e2e-lane-a",  # 351
    "test_simulation": "e2e-lane-a",  # 198
    "test_daemons": "e2e-lane-a",  # 151
    "test_orphans": "e2e-lane-a",  # 36
    "test_fleet_server": "e2e-lane-b",  # 266
    "test_fleet_find": "e2e-lane-b",  # 207
    "test_deploy": "e2e-lane-b",  # 182
    "test_final_model": "e2e-lane-b",  # 53
    "test_hub": "e2e-lane-b",  # 4
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """(Called with the whole session's items, not only this directory's.)"""
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        if not path.startswith("tests/e2e/"):
            continue
        lane = LANES.get(path.removeprefix("tests/e2e/").removesuffix(".py"))
        if lane is None:
            raise pytest.UsageError(f"{path}: give it a lane in tests/e2e/conftest.py LANES")
        item.add_marker(pytest.mark.xdist_group(lane))
