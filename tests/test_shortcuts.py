"""The synthetic_identity objective: one fixed block pattern per identity, written by `facepoison craft`."""

import h5py
import numpy as np
import torch

from facepoison.cli.main import main
from facepoison.objectives import create_objective
from facepoison.shortcuts import patterns
from recognition.faceset import FaceSet
from tests.conftest import write_face_checkpoint, write_face_set


def test_patterns_are_blocks_at_the_corners_of_the_ball():
    p = patterns([0, 1, 0, 2], (3, 20, 20), 8 / 255, seed=1, patch=8)
    assert p.shape == (4, 3, 20, 20)
    assert torch.allclose(p.abs(), torch.full_like(p, 8 / 255))
    assert torch.equal(p[0], p[2]) and not torch.equal(p[0], p[1]) and not torch.equal(p[1], p[3])
    block = p[1, :, :8, :8]
    assert torch.equal(block, block[:, :1, :1].expand_as(block))  # constant inside a block
    assert not torch.equal(patterns([0], (3, 20, 20), 8 / 255, seed=2)[0], p[0])  # the seed matters
    obj = create_objective("synthetic_identity")
    assert obj.classwise and obj.dataset_level and not obj.optimizes


def test_craft_writes_one_pattern_per_identity(tmp_path, capsys):
    faces = write_face_set(tmp_path / "faces.h5", identities=3, per_identity=4)
    sur = write_face_checkpoint(tmp_path / "sur.pt", num_classes=3)
    store = tmp_path / "p.h5"
    assert main(["craft", str(faces), "--surrogate", str(sur), "--objective", "synthetic_identity",
                 "--out", str(store), "--batch-size", "5", "--eps", "8", "-q"]) == 0
    labels = FaceSet(faces).labels.numpy()
    images = np.stack([FaceSet(faces)[i][0].numpy() for i in range(len(labels))]).astype(np.int16)
    with h5py.File(store, "r") as f:
        delta = f["delta"][:].astype(np.int16)
    assert np.abs(delta).max() == 8 and ((images + delta >= 0) & (images + delta <= 255)).all()
    # away from clipping the stored Δ is the identity's pattern: equal within an identity, different across
    want = np.stack([patterns([int(y)], (3, 112, 112), 8 / 255, seed=0)[0].numpy() * 255 for y in labels])
    free = (images >= 8) & (images <= 247)
    assert (delta[free] == np.round(want[free])).all()
    assert not np.array_equal(np.sign(want[labels == 0][0]), np.sign(want[labels == 1][0]))
