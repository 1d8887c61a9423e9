"""The image agent's decide step, without a cluster (the agent itself runs in every
cluster test; replication is tested in test_image_replication.py)."""

from __future__ import annotations

from symphonyd.image.agent import Local, decide_image
from symphonyd.reconcile import Action

IMAGE = {"id": "img1", "fingerprint": "f" * 64, "holders": ["n1"], "status": "ready"}


def local(files: set[str], placed: set[str]) -> Local:
    return Local(files=frozenset(files), placed=frozenset(placed))


def test_a_holder_without_its_file_drops_the_claim() -> None:
    assert decide_image(IMAGE, "n1", local(set(), {"img1"})) == [Action("drop claim")]


def test_a_node_that_should_hold_an_image_fetches_it_or_records_itself() -> None:
    assert decide_image(IMAGE, "n2", local(set(), {"img1"})) == [Action("fetch")]
    # the file is here but the record does not say so: fetch records it without copying
    assert decide_image(IMAGE, "n2", local({"f" * 64}, {"img1"})) == [Action("fetch")]


def test_nothing_to_do_when_the_files_match_the_records() -> None:
    assert decide_image(IMAGE, "n1", local({"f" * 64}, {"img1"})) == []
    assert decide_image(IMAGE, "n2", local(set(), set())) == []  # not placed here
    assert decide_image(IMAGE, "n1", local({"f" * 64}, set())) == []  # kept, extra copy
