"""Import of the authors' per-class head checkpoints (full paper sizes, recipe weights)."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from cmdr_iad import CMDRIAD
from cmdr_iad.official import find_official_checkpoints, read_official_checkpoint


@pytest.mark.slow
def test_import_matches_directly_loaded_heads(cli, official_heads, tmp_path):
    heads_dir, states = official_heads
    out = tmp_path / "imported"
    rc, _, err = cli("import-official", heads_dir, "--category", "synthetic", "--out", out,
                     "--random-backbones", "--quiet")
    assert rc == 0, err
    meta = json.loads((out / "model.json").read_text())
    assert meta["preset"] == "paper" and meta["modality"] == "rgb+xyz"
    assert meta["info"]["source"]["kind"] == "official-checkpoints"
    assert meta["thresholds"] == {}
    det = CMDRIAD.load(out, device="cpu")
    for head, sd in states.items():
        own = det.heads[head].state_dict()
        assert set(own) == set(sd)
        for k, v in sd.items():
            assert torch.equal(own[k], v), (head, k)
    # the same files loaded straight into the modules predict identically (the token-wise
    # mapping heads are checked on a slice of tokens; the decoders' full-size forward is covered
    # by the golden pipeline test, which predicts through an imported model)
    from cmdr_iad.model.mapping import CrossModalMLP

    g = torch.Generator().manual_seed(0)
    for head, (i, o) in {"map2Dto3D": (768, 1152), "map3Dto2D": (1152, 768)}.items():
        ref = CrossModalMLP(i, o).eval()
        ref.load_state_dict(read_official_checkpoint(
            heads_dir / "synthetic" / f"{head}_synthetic_independent_50ep_1bs.pth"), strict=True)
        x = torch.randn(1, 500, i, generator=g)
        with torch.no_grad():
            assert torch.equal(det.heads[head](x), ref(x))
    assert not det.heads.training


def test_finds_flat_and_category_layouts(official_heads, tmp_path):
    heads_dir, _ = official_heads
    files = find_official_checkpoints(heads_dir, "synthetic")
    assert sorted(files) == ["Dec2D", "Dec3D", "map2Dto3D", "map3Dto2D"]
    assert all(p.parent.name == "synthetic" for p in files.values())
    from cmdr_iad.errors import UserInputError

    with pytest.raises(UserInputError, match="not found"):
        find_official_checkpoints(heads_dir, "synthetic", epochs=10)


class _Evil:
    def __reduce__(self):
        return (print, ("this would run at load time",))


def test_pickled_object_checkpoint_is_refused(cli, tmp_path):
    d = tmp_path / "heads"
    d.mkdir()
    for head in ("map2Dto3D", "map3Dto2D", "Dec2D", "Dec3D"):
        torch.save({"weight": torch.zeros(2), "obj": _Evil()}, d / f"{head}_bagel_independent_50ep_1bs.pth")
    from cmdr_iad.errors import WeightsError

    with pytest.raises(WeightsError, match="unpickling"):
        read_official_checkpoint(d / "Dec2D_bagel_independent_50ep_1bs.pth")
    out = tmp_path / "m"
    rc, _, err = cli("import-official", d, "--category", "bagel", "--out", out, "--random-backbones")
    assert rc == 2 and err.count("\n") == 1 and "unpickling" in err and "\x1b" not in err, err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # a plain pickle that is not a torch file at all
    (d / "junk.pth").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(WeightsError):
        read_official_checkpoint(d / "junk.pth")


def test_checkpoint_not_fitting_the_paper_heads(cli, tmp_path, official_heads):
    heads_dir, states = official_heads
    d = tmp_path / "heads"
    d.mkdir()
    for head, sd in states.items():
        if head == "Dec2D":
            sd = dict(sd)
            sd["reconstruct.4.weight"] = torch.ones(10)
        torch.save(sd, d / f"{head}_bagel_independent_50ep_1bs.pth")
    rc, _, err = cli("import-official", d, "--category", "bagel", "--out", tmp_path / "m",
                     "--random-backbones")
    assert rc == 2 and "do not fit" in err and "reconstruct.4.weight" in err, err
    assert not (tmp_path / "m").exists()


def test_missing_heads_dir(cli, tmp_path):
    rc, _, err = cli("import-official", tmp_path / "nope", "--category", "bagel", "--out", tmp_path / "m")
    assert rc == 2 and "not found" in err
