"""The queue of fleet searches that `fleet-server find` hands to the running service."""

import json
from pathlib import Path

import pytest

from server.search_jobs import (
    DONE,
    FAILED,
    QUEUED,
    RUNNING,
    JobError,
    SearchQueue,
    SearchRequest,
)
from ticket.runconfig import SearchSettings


def _request(name: str = "find-heart", **settings: object) -> SearchRequest:
    values = {"search_method": "fed-oneshot", "search_target_density": 0.2, **settings}
    return SearchRequest(
        name,
        Path("/srv/dense.ticket"),
        Path("/srv/heart.ticket"),
        SearchSettings(**values, search_out=Path("/srv/heart.ticket")),  # type: ignore[arg-type]
    )


def test_a_submitted_search_round_trips_and_is_pending_until_it_finishes(tmp_path: Path) -> None:
    queue = SearchQueue(tmp_path)
    fedsgd = {"search_optimizer": "sgd", "search_lr": 1.0, "search_batch_size": 4096}
    queue.submit(_request(**fedsgd))

    assert queue.pending() == ["find-heart"]
    read = queue.request("find-heart")
    assert read.settings == _request(**fedsgd).settings  # the search's own schedule included
    assert read.ticket == Path("/srv/dense.ticket")
    assert read.submitted_at
    status = queue.status("find-heart")
    assert status is not None and status.state == QUEUED

    queue.set_status("find-heart", RUNNING, "level-001")
    assert queue.pending() == ["find-heart"]
    queue.set_status("find-heart", DONE, "finished:completed")
    assert queue.pending() == []


def test_a_second_submission_of_a_running_job_is_refused_a_finished_one_requeued(
    tmp_path: Path,
) -> None:
    queue = SearchQueue(tmp_path)
    queue.submit(_request())
    with pytest.raises(JobError, match="already queued; follow it with the same command"):
        queue.submit(_request())
    queue.set_status("find-heart", FAILED, "finished:failed")
    queue.submit(_request(search_target_density=0.1))
    assert queue.request("find-heart").settings.search_target_density == 0.1


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{not json", "not JSON"),
        (json.dumps({"format": 2}), "not a format-1 search job"),
        (json.dumps({"format": 1, "name": "find-heart"}), "missing 'ticket'"),
        (
            json.dumps(
                {"format": 1, "name": "find-heart", "ticket": "t", "out": "o", "settings": {}}
                | {"plaintext": "yes"}
            ),
            "plaintext must be a boolean",
        ),
        (
            json.dumps(
                {"format": 1, "name": "find-heart", "ticket": "t", "out": "o"}
                | {"settings": {"search_speed": 3}}
            ),
            r"unknown search settings \['search_speed'\]",
        ),
        (
            json.dumps(
                {"format": 1, "name": "find-heart", "ticket": "t", "out": "o"}
                | {"settings": {"search_target_density": 2.0}}
            ),
            "search-target-density",
        ),
        (
            json.dumps(
                {"format": 1, "name": "find-heart", "ticket": "t", "out": "o"}
                | {"settings": {"search_optimizer": "rmsprop"}}
            ),
            "search-optimizer: must be one of: \"\", adam, sgd; got 'rmsprop'",
        ),
        (
            json.dumps({"format": 1, "name": "other", "ticket": "t", "out": "o", "settings": {}}),
            "names job 'other', not 'find-heart'",
        ),
    ],
)
def test_a_damaged_job_file_is_an_error_naming_the_file(
    tmp_path: Path, document: str, message: str
) -> None:
    path = tmp_path / "find-heart.json"
    path.write_text(document)
    with pytest.raises(JobError, match=message) as raised:
        SearchQueue(tmp_path).request("find-heart")
    assert str(path) in str(raised.value)


def test_an_oversized_job_file_is_refused_unread(tmp_path: Path) -> None:
    (tmp_path / "find-heart.json").write_text(" " * (64 * 1024 + 1))
    with pytest.raises(JobError, match="over 65536 bytes"):
        SearchQueue(tmp_path).request("find-heart")


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden"])
def test_a_job_name_must_be_a_plain_file_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(JobError, match="job name"):
        SearchQueue(tmp_path).status(name)
