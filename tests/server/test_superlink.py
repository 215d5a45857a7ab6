"""The SuperLink's processes as the fleet-server starts them: they die with a killed server."""

from pathlib import Path

import pytest

from tests.process_tree import (
    assert_tree_dies_with,
    start_launcher,
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
    assert_tree_dies_with(server, pids_file)
