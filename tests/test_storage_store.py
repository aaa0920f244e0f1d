"""Tests of the adversarial store layout (storage_schemas). One property per test; all on tmp_path."""

from __future__ import annotations

import json
import multiprocessing as mp
import pickle
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage_schemas import (
    SCHEMA_VERSION,
    AdversarialStore,
    CorruptChunkError,
    FingerprintMismatchError,
    IncompleteStoreError,
    SchemaVersionError,
    StoreError,
    StoreValidationError,
    create_store,
    open_store,
    state_dict_fingerprint,
)

REPO = Path(__file__).resolve().parents[1]
PYTHON = REPO / ".venv" / "bin" / "python"

FP = "f" * 64
ATTACKS = {
    "PGD_N": {"library": "advertorch", "class": "LinfPGDAttack", "eps": 0.3, "steps": 40, "targeted": False},
    "CW_T": {"library": "advertorch", "class": "CarliniWagnerL2Attack", "steps": 100, "targeted": True,
             "target_rule": "random_other"},
}
SHAPE = (1, 4, 4)
NUM_ROWS = 20  # 3 blocks of 8, 8, 4 rows
BLOCK = 8


def make_store(path: Path, **overrides) -> AdversarialStore:
    kwargs = dict(
        dataset="mnist", split="train", num_rows=NUM_ROWS, image_shape=SHAPE, attacks=ATTACKS,
        source_fingerprint=FP, source_arch="lenet", seed=0, block_size=BLOCK,
    )
    kwargs.update(overrides)
    return create_store(path, **kwargs)


def block_data(store: AdversarialStore, block: int) -> dict:
    """Deterministic write_block kwargs for one block (content depends only on the block index)."""
    start, stop = store.block_range(block)
    n = stop - start
    rng = np.random.default_rng(1000 + block)
    img = (n, *store.image_shape)
    return dict(
        clean=rng.integers(0, 256, img, dtype=np.uint8),
        labels=rng.integers(0, 10, n).astype(np.int64),
        adversarial={a: rng.integers(0, 256, img, dtype=np.uint8) for a in store.attack_names},
        targets={a: rng.integers(0, 10, n).astype(np.int64) for a in store.targeted_attacks},
        success_counts={a: int(rng.integers(0, n + 1)) for a in store.attack_names},
    )


def write_blocks(store: AdversarialStore, blocks) -> None:
    for b in blocks:
        store.write_block(b, **block_data(store, b))


def edit_attrs(path: Path, fn) -> None:
    """Rewrite the group's attributes in zarr.json directly on disk."""
    meta_path = path / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"] = fn(meta["attributes"])
    meta_path.write_text(json.dumps(meta))


# ------------------------------------------------------------------------------------ basic behaviour


def test_round_trip_of_written_blocks(tmp_path):
    store = make_store(tmp_path / "s")
    write_blocks(store, range(store.num_blocks))
    reread = open_store(tmp_path / "s", require_complete=True)
    got = reread.read_rows(0, NUM_ROWS)
    assert set(got) == {"clean", "label", "adv/PGD_N", "adv/CW_T", "target/CW_T"}
    for b in range(store.num_blocks):
        start, stop = store.block_range(b)
        want = block_data(store, b)
        np.testing.assert_array_equal(got["clean"][start:stop], want["clean"])
        np.testing.assert_array_equal(got["label"][start:stop], want["labels"])
        for a in store.attack_names:
            np.testing.assert_array_equal(got[f"adv/{a}"][start:stop], want["adversarial"][a])
        np.testing.assert_array_equal(got["target/CW_T"][start:stop], want["targets"]["CW_T"])
    assert got["clean"].dtype == np.uint8 and got["label"].dtype == np.int64
    assert store.block_range(2) == (16, 20)  # last block is short


def test_layout_is_unsharded_one_chunk_per_block_with_checksums(tmp_path):
    make_store(tmp_path / "s")
    g = zarr.open_group(tmp_path / "s", mode="r")
    assert isinstance(g["adv"], zarr.Group) and isinstance(g["target"], zarr.Group)
    assert g["clean"].chunks == (BLOCK, *SHAPE) and g["adv/PGD_N"].chunks == (BLOCK, *SHAPE)
    assert g["label"].chunks == (BLOCK,) and g["block_done"].chunks == (1,)
    assert g["success_count"].shape == (3, 2) and g["success_count"].chunks == (1, 2)
    assert "CW_T" in g["target"] and "PGD_N" not in g["target"]
    for name in ("clean", "label", "adv/CW_T", "target/CW_T", "block_done", "success_count"):
        assert g[name].shards is None
        assert [type(c).__name__ for c in g[name].compressors] == ["ZstdCodec", "Crc32cCodec"]
    attrs = g.attrs.asdict()
    assert attrs["schema_version"] == SCHEMA_VERSION and attrs["attack_order"] == ["PGD_N", "CW_T"]
    assert set(attrs["library_versions"]) == {"zarr", "numpy", "numcodecs", "python"}


def test_block_done_flag_is_written_after_all_data(tmp_path, monkeypatch):
    store = make_store(tmp_path / "s")
    keys: list[str] = []
    original = zarr.storage.LocalStore.set

    async def recording_set(self, key, value):
        keys.append(key)
        return await original(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", recording_set)
    write_blocks(store, [1])
    done_idx = [i for i, k in enumerate(keys) if k.startswith("block_done/")]
    assert done_idx == [len(keys) - 1], keys
    data_prefixes = ("clean/", "label/", "adv/PGD_N/", "adv/CW_T/", "target/CW_T/", "success_count/")
    for prefix in data_prefixes:
        assert any(k.startswith(prefix) for k in keys[:-1]), (prefix, keys)


def test_crash_before_done_flag_leaves_block_pending(tmp_path, monkeypatch):
    store = make_store(tmp_path / "s")
    original = zarr.storage.LocalStore.set

    async def crashing_set(self, key, value):
        if key.startswith("success_count/"):
            raise OSError("simulated crash")
        return await original(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", crashing_set)
    with pytest.raises(OSError):
        write_blocks(store, [0])
    monkeypatch.undo()
    assert open_store(tmp_path / "s").pending_blocks() == [0, 1, 2]


def test_pending_blocks_after_partial_writes(tmp_path):
    store = make_store(tmp_path / "s")
    assert store.pending_blocks() == [0, 1, 2] and not store.is_complete()
    write_blocks(store, [2, 0])
    assert store.pending_blocks() == [1]
    assert open_store(tmp_path / "s").completed_blocks().tolist() == [True, False, True]
    write_blocks(store, [1])
    assert store.pending_blocks() == [] and store.is_complete()


def test_rewriting_a_block_writes_identical_bytes(tmp_path):
    store = make_store(tmp_path / "s")
    write_blocks(store, [0])

    def snapshot():
        root = tmp_path / "s"
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    before = snapshot()
    write_blocks(store, [0])
    assert snapshot() == before


def test_create_store_with_same_attrs_resumes(tmp_path):
    store = make_store(tmp_path / "s")
    write_blocks(store, [0])
    resumed = make_store(tmp_path / "s")
    assert resumed.mode == "r+" and resumed.pending_blocks() == [1, 2]
    assert resumed.attrs["created_at"] == store.attrs["created_at"]


@pytest.mark.parametrize(
    "override, attr",
    [
        ({"num_rows": 21}, "num_rows"),
        ({"seed": 1}, "seed"),
        ({"source_fingerprint": "0" * 64}, "source_fingerprint"),
        ({"attacks": {"PGD_N": {**ATTACKS["PGD_N"], "eps": 0.1}, "CW_T": ATTACKS["CW_T"]}}, "attacks"),
    ],
)
def test_create_store_with_different_attrs_errors(tmp_path, override, attr):
    make_store(tmp_path / "s")
    with pytest.raises(StoreError, match=attr) as exc:
        make_store(tmp_path / "s", **override)
    assert "overwrite=True" in str(exc.value)
    replaced = make_store(tmp_path / "s", overwrite=True, **override)
    assert replaced.pending_blocks() == list(range(replaced.num_blocks))


def test_schema_version_mismatch_names_both_versions(tmp_path):
    make_store(tmp_path / "s")
    edit_attrs(tmp_path / "s", lambda a: {**a, "schema_version": SCHEMA_VERSION + 41})
    with pytest.raises(SchemaVersionError) as exc:
        open_store(tmp_path / "s")
    msg = str(exc.value)
    assert f"found {SCHEMA_VERSION + 41}" in msg and f"expected {SCHEMA_VERSION}" in msg


def test_fingerprint_mismatch_names_both_fingerprints(tmp_path):
    make_store(tmp_path / "s")
    teacher = "0123456789abcdef" * 4
    with pytest.raises(FingerprintMismatchError) as exc:
        open_store(tmp_path / "s", expected_fingerprint=teacher)
    msg = str(exc.value)
    assert FP in msg and teacher in msg and "Regenerate the pool" in msg
    assert open_store(tmp_path / "s", expected_fingerprint=FP).source_fingerprint == FP


def test_require_complete_on_incomplete_store_raises(tmp_path):
    store = make_store(tmp_path / "s")
    write_blocks(store, [0])
    with pytest.raises(IncompleteStoreError, match=r"2 of 3 blocks.*generate_pool"):
        open_store(tmp_path / "s", require_complete=True)


def test_missing_attack_array_fails_validate(tmp_path):
    store = make_store(tmp_path / "s")
    shutil.rmtree(tmp_path / "s" / "adv" / "CW_T")
    with pytest.raises(StoreValidationError, match="adv/CW_T"):
        store.validate()
    with pytest.raises(StoreValidationError):
        open_store(tmp_path / "s")


def test_arrays_of_different_lengths_fail_validate(tmp_path):
    store = make_store(tmp_path / "s")
    zarr.open_array(tmp_path / "s" / "adv" / "PGD_N", mode="r+").resize((NUM_ROWS - 3, *SHAPE))
    with pytest.raises(StoreValidationError, match="different lengths"):
        store.validate()


def test_wrong_dtype_fails_validate(tmp_path):
    make_store(tmp_path / "s")
    g = zarr.open_group(tmp_path / "s", mode="r+")
    g.create_array("label", shape=(NUM_ROWS,), dtype="int32", chunks=(BLOCK,), overwrite=True)
    with pytest.raises(StoreValidationError, match="dtype"):
        open_store(tmp_path / "s")


def test_flipped_byte_in_chunk_is_detected_on_read(tmp_path):
    store = make_store(tmp_path / "s")
    write_blocks(store, [0, 1])
    array_dir = tmp_path / "s" / "adv" / "PGD_N"
    chunk_files = sorted(p for p in array_dir.rglob("*") if p.is_file() and p.name != "zarr.json")
    assert chunk_files
    chunk = chunk_files[0]
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    reread = open_store(tmp_path / "s")  # metadata is fine; the corruption shows on reading data
    with pytest.raises(CorruptChunkError, match="corrupt"):
        reread.read_rows(0, NUM_ROWS)
    assert reread.verify() == [0]


def test_success_rates(tmp_path):
    store = make_store(tmp_path / "s")
    assert all(np.isnan(r) for r in store.success_rates().values())
    d0, d2 = block_data(store, 0), block_data(store, 2)
    d0["success_counts"] = {"PGD_N": 8, "CW_T": 2}
    d2["success_counts"] = {"PGD_N": 1, "CW_T": 0}
    store.write_block(0, **d0)
    store.write_block(2, **d2)
    rates = store.success_rates()
    assert rates == pytest.approx({"PGD_N": 9 / 12, "CW_T": 2 / 12})


def test_finalize_requires_complete_and_records_rates(tmp_path):
    store = make_store(tmp_path / "s")
    write_blocks(store, [0, 1])
    with pytest.raises(IncompleteStoreError, match="generate_pool"):
        store.finalize()
    write_blocks(store, [2])
    store.finalize(extra_attrs={"run_id": "abc"})
    attrs = open_store(tmp_path / "s", require_complete=True).attrs
    assert attrs["complete"] is True and attrs["run_id"] == "abc" and "completed_at" in attrs
    assert attrs["success_rates"] == pytest.approx(store.success_rates())


def test_write_block_rejects_bad_inputs_before_writing(tmp_path):
    store = make_store(tmp_path / "s")
    good = block_data(store, 0)
    with pytest.raises(StoreValidationError, match="dtype float32"):
        store.write_block(0, **{**good, "clean": good["clean"].astype(np.float32)})
    with pytest.raises(StoreValidationError, match=r"shape \(7, 1, 4, 4\)"):
        store.write_block(0, **{**good, "clean": good["clean"][:7]})
    with pytest.raises(StoreValidationError, match="missing"):
        store.write_block(0, **{**good, "targets": {}})
    with pytest.raises(StoreValidationError, match=r"\[0, 8\]"):
        store.write_block(0, **{**good, "success_counts": {"PGD_N": 9, "CW_T": 0}})
    with pytest.raises(StoreError, match="read-only"):
        open_store(tmp_path / "s").write_block(0, **good)
    assert store.pending_blocks() == [0, 1, 2]
    assert not any(p.is_file() for p in (tmp_path / "s" / "clean").rglob("*") if p.name != "zarr.json")


def test_store_pickles_as_path_and_mode(tmp_path):
    store = make_store(tmp_path / "s")
    clone = pickle.loads(pickle.dumps(store))
    write_blocks(clone, [1])
    assert clone.mode == "r+" and store.pending_blocks() == [0, 2]


# ------------------------------------------------------------------------------------ concurrency


def _writer(path: str, blocks: list[int]) -> None:
    store = open_store(path, mode="r+")
    write_blocks(store, blocks)


def test_two_processes_writing_different_blocks_lose_no_rows(tmp_path):
    path = tmp_path / "s"
    store = make_store(path, num_rows=24 * 4, block_size=4)  # 24 blocks
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), list(range(i, 24, 2)))) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    reread = open_store(path, require_complete=True)
    got = reread.read_rows(0, reread.num_rows)
    for b in range(reread.num_blocks):
        start, stop = reread.block_range(b)
        want = block_data(store, b)
        np.testing.assert_array_equal(got["clean"][start:stop], want["clean"])
        np.testing.assert_array_equal(got["adv/CW_T"][start:stop], want["adversarial"]["CW_T"])
        np.testing.assert_array_equal(got["label"][start:stop], want["labels"])


# ------------------------------------------------------------------------------------ fingerprint


class _FakeTensor:
    """Duck-typed stand-in for a torch tensor (has .detach().cpu().numpy())."""

    def __init__(self, arr):
        self._arr = arr

    def detach(self):
        return self

    def cpu(self):
        return self

    def numpy(self):
        return self._arr


def test_fingerprint_is_stable_and_changes_with_one_weight():
    rng = np.random.default_rng(0)
    sd = {"conv.weight": rng.standard_normal((4, 1, 3, 3)).astype(np.float32),
          "conv.bias": np.zeros(4, np.float32), "bn.num_batches_tracked": np.array(7, np.int64)}
    fp = state_dict_fingerprint(sd)
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert state_dict_fingerprint(dict(reversed(list(sd.items())))) == fp  # key order does not matter
    assert state_dict_fingerprint({k: _FakeTensor(v.copy()) for k, v in sd.items()}) == fp  # tensors
    big_endian = {**sd, "conv.weight": sd["conv.weight"].astype(">f4")}
    assert state_dict_fingerprint(big_endian) == fp  # byte order normalised
    changed = {k: v.copy() for k, v in sd.items()}
    changed["conv.weight"][0, 0, 0, 0] += 1e-3
    assert state_dict_fingerprint(changed) != fp
    assert state_dict_fingerprint({**sd, "conv.bias": sd["conv.bias"].astype(np.float64)}) != fp  # dtype
    assert state_dict_fingerprint({**sd, "conv.bias": sd["conv.bias"].reshape(2, 2)}) != fp  # shape
    assert state_dict_fingerprint({**sd, "conv.bias2": sd.pop("conv.bias")}) != fp  # name


# ------------------------------------------------------------------------------------ CLI


def test_inspect_cli_prints_summary(tmp_path):
    store = make_store(tmp_path / "s")
    write_blocks(store, [0])
    res = subprocess.run(
        [str(PYTHON), "-m", "storage_schemas.inspect", str(tmp_path / "s")],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "mnist/train" in out and "1 / 3" in out and FP in out and "lenet" in out
    assert "PGD_N" in out and "CW_T" in out and '"eps": 0.3' in out and "success" in out
    bad = subprocess.run(
        [str(PYTHON), "-m", "storage_schemas.inspect", str(tmp_path / "missing")],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert bad.returncode == 2 and "No adversarial store" in bad.stderr


# ------------------------------------------------------------------------------------ hypothesis

_REQUIRED = ["schema_version", "dataset", "split", "num_rows", "image_shape", "block_size", "num_blocks",
             "source_fingerprint", "source_arch", "created_at", "library_versions", "seed", "attacks",
             "attack_order", "complete"]

_INVALID_VALUES = {
    "schema_version": [0, SCHEMA_VERSION + 1, str(SCHEMA_VERSION), None, float(SCHEMA_VERSION), True],
    "dataset": ["", None, 3, ["mnist"]],
    "split": ["", None],
    "num_rows": [0, -5, NUM_ROWS + 1, NUM_ROWS - 1, str(NUM_ROWS), 2.5, None, True],
    "image_shape": [[1, 4], [1, 4, 5], [0, 4, 4], "1x4x4", None, [1, 4, 4, 1]],
    "block_size": [0, 4, 16, "8", None],
    "num_blocks": [2, 4, "3", None],
    "source_fingerprint": ["", None, 5],
    "source_arch": ["", None],
    "created_at": ["yesterday", None, 0],
    "library_versions": [None, "zarr 3", {"zarr": 3}],
    "seed": [None, "0", 1.5],
    "attacks": [{}, "PGD_N", None, {"PGD_N": ATTACKS["PGD_N"]},
                {"PGD_N": {**ATTACKS["PGD_N"], "targeted": True}, "CW_T": ATTACKS["CW_T"]},
                {"PGD_N": ATTACKS["PGD_N"], "CW_T": {**ATTACKS["CW_T"], "targeted": False}},
                {"PGD_N": {"eps": 0.3}, "CW_T": ATTACKS["CW_T"]},
                {"PGD_N": ATTACKS["PGD_N"], "CW_T": ATTACKS["CW_T"], "FGSM": {"targeted": False}}],
    "attack_order": [[], ["PGD_N"], ["PGD_N", "CW_T", "CW_T"], None, "PGD_N", ["PGD_N", "CW_X"]],
    "complete": [True, None, "yes", 1],
}


def _set(key, value):
    return lambda a: {**a, key: value}


def _delete(key):
    return lambda a: {k: v for k, v in a.items() if k != key}


# Each mutation: (description, function attrs -> attrs, breaks the store?, key it sets wholesale or None).
# A benign mutation that later sets the same key wholesale repairs an earlier breaking one.
_breaking = st.one_of(
    st.sampled_from(_REQUIRED).map(lambda k: (f"delete {k}", _delete(k), True, k)),
    st.sampled_from([(k, v) for k, vs in _INVALID_VALUES.items() for v in vs]).map(
        lambda kv: (f"set {kv[0]}={kv[1]!r}", _set(*kv), True, kv[0])
    ),
    st.just(("add _initializing", _set("_initializing", True), True, "_initializing")),
    st.just(("complete with rates but pending blocks",
             lambda a: {**a, "complete": True, "completed_at": "2024-01-01T00:00:00+00:00",
                        "success_rates": {"PGD_N": 0.5, "CW_T": 0.5}}, True, "complete")),
)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
_benign = st.one_of(
    st.tuples(st.text(min_size=1, max_size=10).filter(lambda k: k not in _REQUIRED and not k.startswith("_")
                                                      and k not in ("success_rates", "completed_at")),
              _json_values).map(lambda kv: (f"add extra {kv[0]!r}", _set(*kv), False, kv[0])),
    st.tuples(st.sampled_from(["dataset", "split", "source_arch", "source_fingerprint"]),
              st.text(min_size=1, max_size=10)).map(lambda kv: (f"rename {kv[0]}", _set(*kv), False, kv[0])),
    st.integers(-(2**53), 2**53).map(lambda s: ("change seed", _set("seed", s), False, "seed")),
    st.datetimes().map(lambda d: ("change created_at", _set("created_at", d.isoformat()), False, "created_at")),
    st.floats(0, 1).map(lambda e: ("change eps", lambda a: _set_eps(a, e), False, None)),
)


def _set_eps(attrs, eps):
    """Change a non-structural field of one attack spec (a no-op if an earlier mutation broke 'attacks')."""
    attacks = attrs.get("attacks")
    if not (isinstance(attacks, dict) and isinstance(attacks.get("PGD_N"), dict)):
        return attrs
    return {**attrs, "attacks": {**attacks, "PGD_N": {**attacks["PGD_N"], "eps": eps}}}


@pytest.fixture(scope="module")
def template_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("template") / "s"
    store = make_store(path)
    write_blocks(store, [0])
    return path


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(st.one_of(_breaking, _benign), min_size=1, max_size=3),
       replace_whole=st.sampled_from([None, None, None, None, [], "attrs", 7]))
def test_malformed_attrs_never_validate_and_only_raise_store_errors(template_store, mutations, replace_whole):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s"
        shutil.copytree(template_store, path)

        def mutate(attrs):
            for _desc, fn, _breaks, _key in mutations:
                attrs = fn(attrs)
            return attrs if replace_whole is None else replace_whole

        edit_attrs(path, mutate)
        should_break = replace_whole is not None or any(
            breaks and not any(later[3] == key and not later[2] for later in mutations[i + 1:])
            for i, (_d, _f, breaks, key) in enumerate(mutations)
        )
        if should_break:
            with pytest.raises(StoreError):  # anything else propagates and fails the test
                store = open_store(path)
                store.validate()
        else:
            store = open_store(path)
            store.validate()
            assert store.pending_blocks() == [1, 2]


def test_a_finalized_store_is_immutable(tmp_path):
    store = make_store(tmp_path / "s")
    write_blocks(store, range(store.num_blocks))
    store.finalize()
    reopened = open_store(tmp_path / "s", mode="r+")
    with pytest.raises(StoreError, match="complete and immutable"):
        reopened.write_block(0, **block_data(reopened, 0))
    with pytest.raises(StoreError, match="complete and immutable"):
        reopened.finalize()
