"""Stores addressed by URL (``file://`` through fsspec) behave exactly like stores at local paths."""

from __future__ import annotations

import pytest

from storage_schemas import StoreError, open_store
from test_storage_store import block_data, make_store, write_blocks


def _url(path) -> str:
    return f"file://{path}"


def test_create_store_at_url_resumes_an_existing_store(tmp_path):
    store = make_store(_url(tmp_path / "s"))
    write_blocks(store, [0])
    want = block_data(store, 0)

    resumed = make_store(_url(tmp_path / "s"))

    assert resumed.mode == "r+" and resumed.pending_blocks() == [1, 2]
    assert resumed.attrs["created_at"] == store.attrs["created_at"]
    assert (resumed.read_block(0)["clean"] == want["clean"]).all()
    assert open_store(tmp_path / "s").pending_blocks() == [1, 2]  # the same store seen as a local path


def test_create_store_at_url_resumes_a_store_created_at_the_local_path(tmp_path):
    local = make_store(tmp_path / "s")
    write_blocks(local, [0, 2])
    assert make_store(_url(tmp_path / "s")).pending_blocks() == [1]  # not wiped: done blocks stay done
    reread = open_store(tmp_path / "s")
    assert reread.pending_blocks() == [1] and reread.attrs["created_at"] == local.attrs["created_at"]
    assert (reread.read_block(2)["adv/CW_T"] == block_data(reread, 2)["adversarial"]["CW_T"]).all()


def test_create_store_at_url_with_different_identity_errors_and_keeps_the_store(tmp_path):
    write_blocks(make_store(_url(tmp_path / "s")), [0])
    with pytest.raises(StoreError, match="'seed'") as exc:
        make_store(_url(tmp_path / "s"), seed=1)
    assert "overwrite=True" in str(exc.value)
    assert open_store(_url(tmp_path / "s")).pending_blocks() == [1, 2]


def test_create_store_at_url_overwrite_recreates(tmp_path):
    write_blocks(make_store(_url(tmp_path / "s")), [0])
    replaced = make_store(_url(tmp_path / "s"), seed=1, overwrite=True)
    assert replaced.attrs["seed"] == 1 and replaced.pending_blocks() == [0, 1, 2]


def test_create_store_at_url_refuses_a_non_store_folder(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "notes.txt").write_text("keep me")
    with pytest.raises(StoreError, match="not an adversarial store"):
        make_store(_url(tmp_path / "s"))
    assert (tmp_path / "s" / "notes.txt").read_text() == "keep me"


def test_store_at_url_round_trips_and_finalizes(tmp_path):
    store = make_store(_url(tmp_path / "s"))
    write_blocks(store, range(store.num_blocks))
    store.finalize()
    reread = open_store(_url(tmp_path / "s"), require_complete=True)
    reread.validate()
    for b in range(reread.num_blocks):
        got, want = reread.read_block(b), block_data(reread, b)
        assert (got["clean"] == want["clean"]).all() and (got["target/CW_T"] == want["targets"]["CW_T"]).all()
