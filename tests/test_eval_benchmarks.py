import pickle

import numpy as np
import pytest
from PIL import Image

from eval.benchmarks import load_bin, load_cfp_pairs, load_lfw_pairs


def write_lfw(root, folds=2, per=2):
    names = ["Ann_A", "Bob_B", "Cid_C"]
    for n in names:
        (root / n).mkdir(parents=True)
        for i in (1, 2):
            Image.new("RGB", (8, 8)).save(root / n / f"{n}_{i:04d}.jpg")
    lines = [f"{folds}\t{per}"]
    for f in range(folds):
        lines += [f"{names[(f + k) % 3]}\t1\t2" for k in range(per)]
        lines += [f"{names[(f + k) % 3]}\t1\t{names[(f + k + 1) % 3]}\t2" for k in range(per)]
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    return root


def test_lfw_pairs(tmp_path):
    root = write_lfw(tmp_path / "lfw")
    pairs = load_lfw_pairs(root, root / "pairs.txt")
    assert len(pairs) == 8 and pairs.same.tolist() == [True, True, False, False] * 2
    assert pairs.folds.tolist() == [0] * 4 + [1] * 4
    assert pairs.left[0].endswith("Ann_A/Ann_A_0001.jpg") and pairs.right[2].endswith("Bob_B/Bob_B_0002.jpg")


def test_lfw_bad_input(tmp_path):
    root = write_lfw(tmp_path / "lfw")
    with pytest.raises(ValueError, match="does not exist"):
        load_lfw_pairs(root, root / "nope.txt")
    (root / "Bob_B" / "Bob_B_0002.jpg").unlink()
    with pytest.raises(ValueError, match="missing image.*Bob_B_0002"):
        load_lfw_pairs(root, root / "pairs.txt")
    (root / "pairs.txt").write_text("2 2\nAnn_A 1\n")
    with pytest.raises(ValueError, match="expected 8 pairs"):
        load_lfw_pairs(root, root / "pairs.txt")


def test_cfp_pairs(tmp_path):
    root = tmp_path / "cfp"
    for ident in ("001", "002"):
        for pose in ("frontal", "profile"):
            (root / "Data" / "Images" / ident / pose).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(root / "Data" / "Images" / ident / pose / "01.jpg")
    proto = root / "Protocol"
    for fold in ("01", "02"):
        (proto / "Split" / "FP" / fold).mkdir(parents=True)
    (proto / "Pair_list_F.txt").write_text("1 ../Data/Images/001/frontal/01.jpg\n2 ../Data/Images/002/frontal/01.jpg\n")
    (proto / "Pair_list_P.txt").write_text("1 ../Data/Images/001/profile/01.jpg\n2 ../Data/Images/002/profile/01.jpg\n")
    (proto / "Split" / "FP" / "01" / "same.txt").write_text("1,1\n")
    (proto / "Split" / "FP" / "01" / "diff.txt").write_text("1,2\n")
    (proto / "Split" / "FP" / "02" / "same.txt").write_text("2,2\n")
    (proto / "Split" / "FP" / "02" / "diff.txt").write_text("2,1\n")
    pairs = load_cfp_pairs(root, "FP")
    assert pairs.name == "CFP-FP" and pairs.same.tolist() == [True, False, True, False]
    assert pairs.folds.tolist() == [0, 0, 1, 1] and pairs.right[0].endswith("001/profile/01.jpg")
    with pytest.raises(ValueError, match="Protocol/Split/FF"):
        load_cfp_pairs(root, "FF")


def write_bin(path, n=20):
    rng = np.random.default_rng(0)
    images = []
    for _ in range(2 * n):
        buf = __import__("io").BytesIO()
        Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(buf, format="JPEG")
        images.append(buf.getvalue())
    with open(path, "wb") as fh:
        pickle.dump((images, [i % 2 == 0 for i in range(n)]), fh, protocol=2)


def test_bin_roundtrip(tmp_path):
    write_bin(tmp_path / "agedb_30.bin")
    pairs = load_bin(tmp_path / "agedb_30.bin", "AgeDB-30")
    assert len(pairs) == 20 and pairs.same[:2].tolist() == [True, False]
    assert pairs.folds.tolist() == [i // 2 for i in range(20)]
    assert isinstance(pairs.left[0], bytes) and pairs.left[0][:2] == b"\xff\xd8"


class Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /tmp/facepoison_pwned",))


def test_malicious_bin_is_refused(tmp_path):
    path = tmp_path / "evil.bin"
    with open(path, "wb") as fh:
        pickle.dump(([Evil()], [True]), fh)
    with pytest.raises(ValueError, match="not a safe insightface .bin.*posix.system|not a safe"):
        load_bin(path, "LFW")
    assert not __import__("os").path.exists("/tmp/facepoison_pwned")


def test_wrong_bin_structure(tmp_path):
    path = tmp_path / "odd.bin"
    with open(path, "wb") as fh:
        pickle.dump(([b"a", b"b", b"c"], [True]), fh)
    with pytest.raises(ValueError, match="3 images for 1 pairs"):
        load_bin(path, "VGG2-FP")
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read"):
        load_bin(path, "VGG2-FP")
