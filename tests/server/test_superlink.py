"""The SuperLink's processes as the fleet-server starts them: they die with a killed server."""

from pathlib import Path

import pytest

from tests.process_tree import (
    TREE_SIZE,
    kill_all,
    start_launcher,
    survivors,
    wait_for_pids,
    watchers_of,
    write_fake_tree,
)
from ticket import process_guard


@pytest.mark.skipif(not process_guard.is_supported(), reason="needs Linux /proc")
def test_a_fleet_server_killed_with_sigkill_leaves_no_superlink_process(tmp_path: Path) -> None:
    script, pids_file = write_fake_tree(tmp_path), tmp_path / "pids"
    server = start_launcher(  # fleet-server's start of its SuperLink, as a fake tree
        "import os, sys, time\n"
        "from pathlib import Path\n"
        "from server.superlink import spawn\n"
        f"spawn([sys.executable, {str(script)!r}, {str(pids_file)!r}],\n"
        f"      log_path=Path({str(tmp_path / 'superlink.log')!r}), env=os.environ,\n"
        f"      cwd=Path({str(tmp_path)!r}))\n"
        "time.sleep(600)\n",
        tmp_path / "server.log",
    )
    tree: list[int] = []
    try:
        tree = wait_for_pids(pids_file, TREE_SIZE)
        watchers = watchers_of(tree)
        assert len(watchers) == 1

        server.kill()
        server.wait(timeout=10)

        assert survivors([*tree, *watchers]) == []
    finally:
        server.kill()
        kill_all(tree)
