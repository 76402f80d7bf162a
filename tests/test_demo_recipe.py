"""The demo model's recipe end to end with a few updates per stage (the plumbing, not quality)."""

import json

from ane_diffusion.bundle import load_folder
from ane_diffusion.demo.recipe import main


def test_smoke_recipe_trains_distils_and_ships(tmp_path):
    assets = tmp_path / "assets"
    assert main(["--work", str(tmp_path / "work"), "--smoke", "--assets", str(assets)]) == 0
    report = json.loads((tmp_path / "work" / "shipped.json").read_text())
    assert report["float16_check"]["psnr_db"] >= 35
    assert report["sizes"]["total"] < 50 * 2**20
    kinds = {}
    for layer in sorted((assets / "models").iterdir()):
        bundle = load_folder(assets, layer=layer)
        kinds[layer.name] = (bundle.card.kind, bundle.card.steps)
    assert kinds == {"teacher": ("teacher", None), "stage1": ("guidance-distilled", None),
                     "steps-8": ("progressive", 8), "steps-4": ("progressive", 4),
                     "steps-2": ("progressive", 2), "steps-1": ("progressive", 1)}
    # a second run finds every stage done and changes nothing
    before = sorted(p.stat().st_mtime_ns for p in assets.rglob("*") if p.is_file())
    assert main(["--work", str(tmp_path / "work"), "--smoke", "--assets", str(assets)]) == 0
    assert sorted(p.stat().st_mtime_ns for p in assets.rglob("*") if p.is_file()) == before
