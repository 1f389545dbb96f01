import pytest

from recognition.splits import cfp_fold_identities, heldout_split, lfw_overlap, write_identities


def test_heldout_split_is_deterministic_and_disjoint():
    names = [f"id{i:02d}" for i in range(10)]
    counts = [25, 5, 30, 20, 19, 40, 22, 1, 50, 21]
    release, heldout = heldout_split(names, counts, n_heldout=3, min_photos=20, seed=1)
    assert len(heldout) == 3 and not set(release) & set(heldout) and sorted(release + heldout) == names
    assert all(counts[names.index(h)] >= 20 for h in heldout)
    assert heldout_split(names, counts, 3, 20, seed=1) == (release, heldout)
    with pytest.raises(ValueError, match="only 7"):
        heldout_split(names, counts, 8, 20)


def write_cfp_protocol(root):
    proto = root / "Protocol"
    (proto / "Split" / "FP" / "01").mkdir(parents=True)
    (proto / "Split" / "FP" / "02").mkdir(parents=True)
    (proto / "Pair_list_F.txt").write_text("".join(f"{i} ../Data/Images/00{i}/frontal/01.jpg\n" for i in (1, 2, 3)))
    (proto / "Pair_list_P.txt").write_text("1 ../Data/Images/001/profile/01.jpg\n2 ../Data/Images/003/profile/01.jpg\n")
    (proto / "Split" / "FP" / "01" / "same.txt").write_text("1,1\n")
    (proto / "Split" / "FP" / "01" / "diff.txt").write_text("2,1\n")
    (proto / "Split" / "FP" / "02" / "same.txt").write_text("3,2\n")
    (proto / "Split" / "FP" / "02" / "diff.txt").write_text("")
    return root


def test_cfp_folds_and_lfw_overlap(tmp_path):
    root = write_cfp_protocol(tmp_path / "cfp")
    assert cfp_fold_identities(root) == {1: ["001", "002"], 2: ["003"]}
    with pytest.raises(ValueError, match="Protocol/Split/FF"):
        cfp_fold_identities(root, "FF")
    tsv = tmp_path / "o.tsv"
    tsv.write_text("cfp_id\tcfp_name\tlfw_name\tlfw_n_images\n006\tAdam Sandler\tAdam_Sandler\t4\n")
    assert lfw_overlap(tsv) == {"006"}
    write_identities(tmp_path / "ids.txt", ["a", "b"], comment="release identities\nseed 0")
    assert (tmp_path / "ids.txt").read_text() == "# release identities\n# seed 0\na\nb\n"
