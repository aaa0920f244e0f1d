"""In-memory stores (``mem://<name>``): the same store behaviour as on disk, without zarr."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest

from storage_schemas import (
    MEMORY_PREFIX,
    IncompleteStoreError,
    SchemaVersionError,
    StoreError,
    StoreValidationError,
    delete_memory_store,
    memory_store_names,
    open_store,
)
from storage_schemas.backend import backend_for
from storage_schemas.memory_backend import MemoryArray
from test_storage_store import ATTACKS, FP, NUM_ROWS, block_data, make_store, write_blocks

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def mem_path():
    path = f"{MEMORY_PREFIX}test-{uuid.uuid4().hex[:8]}"
    yield path
    delete_memory_store(path)


def test_memory_store_round_trip_finalize_and_reopen_by_name(mem_path):
    store = make_store(mem_path)
    assert store.pending_blocks() == [0, 1, 2]
    write_blocks(store, [2, 0])
    assert store.pending_blocks() == [1] and not store.is_complete()
    with pytest.raises(IncompleteStoreError, match="generate_pool"):
        store.finalize()
    write_blocks(store, [1])
    store.finalize(extra_attrs={"run_id": "mem"})

    reread = open_store(mem_path, require_complete=True, expected_fingerprint=FP)
    reread.validate()
    assert reread.attrs["complete"] is True and reread.attrs["run_id"] == "mem"
    assert set(reread.attrs["library_versions"]) == {"numpy", "python"}
    got = reread.read_rows(0, NUM_ROWS)
    assert set(got) == {"clean", "label", "adv/PGD_N", "adv/CW_T", "target/CW_T"}
    for b in range(reread.num_blocks):
        start, stop = reread.block_range(b)
        want = block_data(reread, b)
        np.testing.assert_array_equal(got["clean"][start:stop], want["clean"])
        np.testing.assert_array_equal(got["label"][start:stop], want["labels"])
        for a in reread.attack_names:
            np.testing.assert_array_equal(got[f"adv/{a}"][start:stop], want["adversarial"][a])
        np.testing.assert_array_equal(got["target/CW_T"][start:stop], want["targets"]["CW_T"])
    assert got["clean"].dtype == np.uint8 and got["label"].dtype == np.int64
    assert reread.attrs["success_rates"] == pytest.approx(reread.success_rates())
    assert reread.verify() == []
    assert mem_path in reread.summary() and "complete (finalized" in reread.summary()


def test_unwritten_rows_read_as_fill_values(mem_path):
    store = make_store(mem_path)
    write_blocks(store, [1])
    got = store.read_block(0)
    assert (got["clean"] == 0).all() and (got["label"] == -1).all() and (got["target/CW_T"] == -1).all()


def test_memory_store_pending_blocks_seen_by_a_second_handle(mem_path):
    store = make_store(mem_path)
    write_blocks(store, [0, 2])
    other = open_store(mem_path, mode="r+")
    assert other.pending_blocks() == [1]
    write_blocks(other, [1])
    assert store.is_complete()


def test_finalized_memory_store_is_immutable(mem_path):
    store = make_store(mem_path)
    write_blocks(store, range(store.num_blocks))
    store.finalize()
    reopened = open_store(mem_path, mode="r+")
    with pytest.raises(StoreError, match="complete and immutable"):
        reopened.write_block(0, **block_data(reopened, 0))
    with pytest.raises(StoreError, match="complete and immutable"):
        reopened.finalize()


def test_memory_store_resume_refuse_and_overwrite(mem_path):
    store = make_store(mem_path)
    write_blocks(store, [0])
    resumed = make_store(mem_path)
    assert resumed.pending_blocks() == [1, 2] and resumed.attrs["created_at"] == store.attrs["created_at"]
    with pytest.raises(StoreError, match="'seed'") as exc:
        make_store(mem_path, seed=1)
    assert "overwrite=True" in str(exc.value)
    assert open_store(mem_path).pending_blocks() == [1, 2]
    replaced = make_store(mem_path, seed=1, overwrite=True)
    assert replaced.attrs["seed"] == 1 and replaced.pending_blocks() == [0, 1, 2]


def test_read_only_handle_refuses_writes_and_reads_are_copies(mem_path):
    write_blocks(make_store(mem_path), [0])
    ro = open_store(mem_path)
    with pytest.raises(StoreError, match="read-only"):
        ro.write_block(0, **block_data(ro, 0))
    with pytest.raises(StoreError, match="read-only"):
        backend_for(mem_path).open_group(mem_path, "r").put_attrs({})
    got = ro.read_block(0)
    got["clean"][:] = 7
    np.testing.assert_array_equal(ro.read_block(0)["clean"], block_data(ro, 0)["clean"])
    attrs = ro.attrs
    attrs["seed"] = 99
    assert open_store(mem_path).attrs["seed"] == 0


def test_block_done_flag_is_written_after_all_data(mem_path, monkeypatch):
    store = make_store(mem_path)
    written: list[str] = []
    original = MemoryArray.__setitem__

    def recording_setitem(self, sel, value):
        written.append(self.location[len(mem_path) + 1:])
        return original(self, sel, value)

    monkeypatch.setattr(MemoryArray, "__setitem__", recording_setitem)
    write_blocks(store, [1])
    assert written == ["clean", "label", "adv/PGD_N", "adv/CW_T", "target/CW_T", "success_count", "block_done"]


def test_crash_before_done_flag_leaves_block_pending(mem_path, monkeypatch):
    store = make_store(mem_path)
    original = MemoryArray.__setitem__

    def crashing_setitem(self, sel, value):
        if self.location.endswith("/success_count"):
            raise OSError("simulated crash")
        return original(self, sel, value)

    monkeypatch.setattr(MemoryArray, "__setitem__", crashing_setitem)
    with pytest.raises(OSError):
        write_blocks(store, [0])
    monkeypatch.undo()
    assert open_store(mem_path).pending_blocks() == [0, 1, 2]


def test_memory_store_attributes_are_validated(mem_path):
    make_store(mem_path)
    group = backend_for(mem_path).open_group(mem_path, "r+")
    good = group.attrs()
    group.put_attrs({**good, "schema_version": 2})
    with pytest.raises(SchemaVersionError, match="expected 1"):
        open_store(mem_path)
    group.put_attrs({**good, "attack_order": ["PGD_N"]})
    with pytest.raises(StoreValidationError, match="attack_order"):
        open_store(mem_path)
    group.put_attrs(good)
    group.get("adv").create_array("EXTRA", shape=(NUM_ROWS, 1, 4, 4), chunks=(8, 1, 4, 4), dtype=np.dtype(np.uint8),
                                  fill_value=0, dimension_names=("row", "channel", "height", "width"))
    with pytest.raises(StoreValidationError, match="adv/EXTRA"):
        open_store(mem_path)


def test_missing_and_deleted_memory_stores(mem_path):
    with pytest.raises(StoreError, match="No adversarial store") as exc:
        open_store(mem_path)
    assert "process" in str(exc.value)
    make_store(mem_path)
    assert mem_path in memory_store_names()
    assert delete_memory_store(mem_path) is True
    assert delete_memory_store(mem_path) is False
    with pytest.raises(StoreError, match="No adversarial store"):
        open_store(mem_path)
    with pytest.raises(StoreError, match="no name"):
        make_store(MEMORY_PREFIX)


def test_memory_store_pickles_within_the_process_and_threads_write_disjoint_blocks(mem_path):
    store = make_store(mem_path, num_rows=16 * 4, block_size=4)
    clone = pickle.loads(pickle.dumps(store))
    assert clone.mode == "r+" and clone.path == mem_path
    threads = [threading.Thread(target=write_blocks, args=(s, range(i, 16, 2))) for i, s in enumerate((store, clone))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    reread = open_store(mem_path, require_complete=True)
    got = reread.read_rows(0, reread.num_rows)
    for b in range(reread.num_blocks):
        start, stop = reread.block_range(b)
        np.testing.assert_array_equal(got["adv/CW_T"][start:stop], block_data(reread, b)["adversarial"]["CW_T"])


_NO_ZARR_SCRIPT = """
import json, sys
sys.modules["zarr"] = None  # any `import zarr` now raises ImportError
import numpy as np
import storage_schemas as ss

attacks = json.loads(sys.argv[1])
store = ss.create_store("mem://no-zarr", dataset="mnist", split="train", num_rows=10, image_shape=(1, 4, 4),
                        attacks=attacks, source_fingerprint="f" * 64, source_arch="lenet", seed=0, block_size=4)
rng = np.random.default_rng(0)
written = {}
for b in store.pending_blocks():
    start, stop = store.block_range(b)
    n = stop - start
    clean = rng.integers(0, 256, (n, 1, 4, 4), dtype=np.uint8)
    written[b] = clean
    store.write_block(b, clean=clean, labels=np.arange(n, dtype=np.int64),
                      adversarial={a: 255 - clean for a in store.attack_names},
                      targets={a: np.ones(n, np.int64) for a in store.targeted_attacks},
                      success_counts={a: 1 for a in store.attack_names})
store.finalize()
reread = ss.open_store("mem://no-zarr", require_complete=True)
reread.validate()
assert reread.pending_blocks() == []
got = reread.read_rows(0, 10)
assert (got["clean"] == np.concatenate([written[b] for b in sorted(written)])).all()
assert (got["adv/CW_T"] == 255 - got["clean"]).all() and (got["target/CW_T"] == 1).all()
print(reread.summary())
print("LOADED:", sorted(m for m in sys.modules if m.split(".")[0] in ("zarr", "numcodecs") and sys.modules[m]))
try:
    ss.open_store(sys.argv[2])
except ss.StoreError as e:
    print("DISK ERROR:", e)
"""


def test_package_works_without_zarr_using_a_memory_store(tmp_path):
    res = subprocess.run([sys.executable, "-c", _NO_ZARR_SCRIPT, json.dumps(ATTACKS), str(tmp_path / "disk.zarr")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "blocks done    : 3 / 3" in out and "complete (finalized" in out
    assert "DISK ERROR:" in out and "pip install zarr==3.1.6" in out and "mem://" in out.split("DISK ERROR:")[1]
    assert "LOADED: []" in out
