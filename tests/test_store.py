import h5py
import numpy as np
import pytest
import torch

from facepoison.data import ImageSet
from facepoison.errors import UsageError
from facepoison.store import FORMAT, PoisonedDataset, StoreWriter, done_chunks, load_store, merge_parts, part_paths


def attrs(fp="abc"):
    return {"format": FORMAT, "eps": 8.0, "objective": "alignment", "steps": 3, "restarts": 1, "seed": 0,
            "surrogate_sha256": "00", "config": {"a": 1}, "code_revision": "test", "fingerprint": fp}


def chunk(k, n=4, size=2):
    g = torch.Generator().manual_seed(k)
    return torch.randint(-8, 9, (min(size, n - k * size), 3, 4, 4), generator=g, dtype=torch.int16)


def test_roundtrip_and_attrs(tmp_path):
    out = tmp_path / "p.h5"
    ids = np.array([10, 11, 12, 13, 14])
    w = StoreWriter(out, ids, (3, 4, 4), chunk_size=2, bound=8, attrs=attrs())
    deltas = [chunk(k, n=5) for k in range(3)]
    for k, d in enumerate(deltas):
        w.write(k, range(2 * k, 2 * k + len(d)), d, loss=0.5 + k)
    w.close()
    merge_parts(out, 3)
    assert not part_paths(out)
    store = load_store(out)
    assert store.ids.tolist() == ids.tolist()
    assert torch.equal(store.delta, torch.cat(deltas))
    assert store.bound == 8 and store.attrs["objective"] == "alignment" and store.attrs["steps"] == 3
    assert store.attrs["code_revision"] == "test" and store.attrs["surrogate_sha256"] == "00"
    with h5py.File(out) as f:
        assert f["delta"].dtype == np.int8
        assert f["chunk_loss"][:].tolist() == [0.5, 1.5, 2.5]


def test_resume_keeps_finished_chunks_and_checks_fingerprint(tmp_path):
    out = tmp_path / "p.h5"
    ids = np.arange(4)
    w = StoreWriter(out, ids, (3, 4, 4), chunk_size=2, bound=8, attrs=attrs())
    w.write(1, range(2, 4), chunk(1), loss=1.0)
    w.close()  # the run stops here
    assert done_chunks(out, "abc") == {1}
    with pytest.raises(UsageError, match="other settings"):
        done_chunks(out, "different")
    with pytest.raises(UsageError, match="never crafted"):
        merge_parts(out, 2)
    assert not out.exists()
    w = StoreWriter(out, ids, (3, 4, 4), chunk_size=2, bound=8, attrs=attrs())
    w.write(0, range(0, 2), chunk(0), loss=1.0)
    w.close()
    assert len(part_paths(out)) == 2
    merge_parts(out, 2)
    assert not part_paths(out, include_tmp=True)
    assert torch.equal(load_store(out).delta, torch.cat([chunk(0), chunk(1)]))


def test_parts_from_several_ranks_merge(tmp_path):
    out = tmp_path / "p.h5"
    ids = np.arange(4)
    for rank, k in ((0, 0), (1, 1)):
        w = StoreWriter(out, ids, (3, 4, 4), chunk_size=2, bound=8, attrs=attrs(), rank=rank)
        w.write(k, range(2 * k, 2 * k + 2), chunk(k), loss=0.0)
        w.close()
    assert len(part_paths(out)) == 2
    merge_parts(out, 2)
    assert torch.equal(load_store(out).delta, torch.cat([chunk(0), chunk(1)]))


def test_large_eps_uses_int16(tmp_path):
    out = tmp_path / "p.h5"
    w = StoreWriter(out, np.arange(2), (3, 4, 4), chunk_size=2, bound=200, attrs=attrs())
    w.write(0, range(0, 2), torch.full((2, 3, 4, 4), -200, dtype=torch.int16), loss=0.0)
    w.close()
    merge_parts(out, 1)
    assert load_store(out).delta.min() == -200


def test_load_store_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_store(tmp_path / "missing.h5")
    bogus = tmp_path / "bogus.h5"
    with h5py.File(bogus, "w") as f:
        f["x"] = 1
    with pytest.raises(UsageError, match="not a facepoison poison store"):
        load_store(bogus)
    text = tmp_path / "text.h5"
    text.write_text("hello")
    with pytest.raises(UsageError, match="cannot read"):
        load_store(text)


def test_poisoned_dataset_applies_deltas_by_id(tmp_path):
    out = tmp_path / "p.h5"
    w = StoreWriter(out, np.array([5, 7]), (3, 4, 4), chunk_size=2, bound=8, attrs=attrs())
    w.write(0, range(0, 2), torch.stack([torch.full((3, 4, 4), 8), torch.full((3, 4, 4), -8)]).short(), loss=0.0)
    w.close()
    merge_parts(out, 1)
    images = torch.tensor([0, 100, 250], dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 3, 4, 4).contiguous()
    base = ImageSet(images, torch.tensor([0, 1, 0]), torch.tensor([7, 6, 5]), ["a", "b", "c"], ["x", "y"])
    view = PoisonedDataset(base, load_store(out))
    assert view.num_poisoned == 2
    assert view[0][0].unique().tolist() == [0]  # 0 - 8 clipped at 0
    assert view[1][0].unique().tolist() == [100]  # id 6 is not in the store
    assert view[2][0].unique().tolist() == [255]  # 250 + 8 clipped at 255
    assert view[2][1] == 0
