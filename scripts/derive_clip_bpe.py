"""Write the CLIP BPE merges the single-file loader ships, from open_clip's MIT-licensed file.

    pip download open-clip-torch==3.3.0 --no-deps -d /tmp/oc
    python scripts/derive_clip_bpe.py /tmp/oc/open_clip_torch-3.3.0-py3-none-any.whl

Source: ``open_clip/bpe_simple_vocab_16e6.txt.gz`` inside the wheel (the same file OpenAI's CLIP
repository ships; both MIT). Stable Diffusion 1.x (CLIP ViT-L/14) and 2.x (OpenCLIP ViT-H/14) use
this BPE. The file holds a header line and 262,145 merges; CLIP uses the first
``49152 - 256 - 2`` = 48,894 of them. We write them in the ``merges.txt`` form that
``transformers.CLIPTokenizer`` reads (``#version: 0.2`` header, one ``a b`` pair a line); the
vocabulary follows from the merges (:func:`ane_diffusion.loaders.clip_bpe.vocab_from_merges`).
"""

import gzip
import hashlib
import sys
import zipfile
from pathlib import Path

MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2
OUT = Path(__file__).resolve().parents[1] / "ane_diffusion" / "assets" / "single_file" / "clip" / "merges.txt"


def main(wheel: str) -> None:
    raw = zipfile.ZipFile(wheel).read(MEMBER)
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    merges = lines[1:NUM_MERGES + 1]
    assert all(len(m.split(" ")) == 2 for m in merges)
    OUT.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    print(f"{OUT}: {len(merges)} merges from {MEMBER} (sha256 {hashlib.sha256(raw).hexdigest()})")


if __name__ == "__main__":
    main(sys.argv[1])
