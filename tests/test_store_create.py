"""create_store / open_store give the same answers for a local path, a file:// URL and a mem:// store."""

from __future__ import annotations

import uuid

import pytest

from storage_schemas import MEMORY_PREFIX, StoreError, StoreValidationError, delete_memory_store, open_store
from storage_schemas.backend import backend_for
from test_storage_store import make_store, write_blocks


@pytest.fixture(params=["local", "url", "memory"])
def store_path(request, tmp_path):
    if request.param == "memory":
        path = f"{MEMORY_PREFIX}create-{uuid.uuid4().hex[:8]}"
        yield path
        delete_memory_store(path)
    elif request.param == "url":
        yield f"file://{tmp_path / 's'}"
    else:
        yield str(tmp_path / "s")


def test_open_of_a_missing_store_says_how_to_create_it(store_path):
    with pytest.raises(StoreError, match="No adversarial store") as exc:
        open_store(store_path)
    assert "create_store" in str(exc.value)


def test_interrupted_creation_is_reported_on_open_and_recreated_by_create_store(store_path):
    make_store(store_path)
    backend_for(store_path).open_group(store_path, "r+").put_attrs({"_initializing": True})
    with pytest.raises(StoreValidationError, match="never fully created"):
        open_store(store_path)
    store = make_store(store_path)
    assert store.pending_blocks() == [0, 1, 2] and "_initializing" not in store.attrs


def test_resume_keeps_done_blocks_and_a_different_identity_is_refused(store_path):
    write_blocks(make_store(store_path), [1])
    assert make_store(store_path).pending_blocks() == [0, 2]
    with pytest.raises(StoreError, match="'source_arch'"):
        make_store(store_path, source_arch="resnet")
    assert make_store(store_path, source_arch="resnet", overwrite=True).pending_blocks() == [0, 1, 2]


@pytest.mark.parametrize("kind", ["local", "url"])
def test_a_file_where_the_store_should_be_is_refused_and_kept(tmp_path, kind):
    (tmp_path / "s").write_text("not a store")
    path = str(tmp_path / "s") if kind == "local" else f"file://{tmp_path / 's'}"
    with pytest.raises(StoreError, match="not a directory"):
        make_store(path)
    assert (tmp_path / "s").read_text() == "not a store"
