"""Build the embedded sample in data/sample/ from the public archives.

    python scripts/make_sample.py --chest-xray ../shared/datasets/chest_xray_224.zip \
        --mri ../shared/datasets/brain_tumor_mri.zip

Takes a seeded choice of whole patients (X-ray) and of images including some
byte-identical duplicate groups (MRI, so that the duplicate-aware split has
something to do), downscales each to at most MAX_SIDE px and re-encodes it as
JPEG. The layouts are those of the public downloads, so the fetch stage reads
the sample exactly as it reads a full copy.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import random
import re
import shutil
import zipfile
from collections import defaultdict
from pathlib import Path

from PIL import Image

MAX_SIDE = 128
JPEG_QUALITY = 85
SEED = 20261126

# Images per source split and class.
XRAY_PLAN = {
    ("train", "NORMAL"): 60,
    ("train", "PNEUMONIA"): 60,
    ("test", "NORMAL"): 30,
    ("test", "PNEUMONIA"): 30,
}
MRI_PLAN = {
    (split, cls): n
    for split, n in (("Training", 40), ("Testing", 15))
    for cls in ("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor")
}
# At most this many images of one patient, so that one patient cannot fill a
# small validation fold of the sample.
XRAY_MAX_IMAGES_PER_PATIENT = 4
MRI_DUPLICATE_GROUPS = 6  # exact-duplicate groups spanning Training and Testing, kept whole

XRAY_PATIENT = re.compile(r"^(person\d+|NORMAL2-IM-\d+|IM-\d+)")


def downscale(data: bytes, mode: str) -> bytes:
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert(mode)
        img.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def sample_chest_xray(archive: Path, dest: Path, rng: random.Random) -> dict:
    zf = zipfile.ZipFile(archive)
    by_patient: dict[tuple[str, str], dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for name in zf.namelist():
        parts = name.split("/")
        if len(parts) != 4 or not parts[3].lower().endswith(".jpeg"):
            continue
        _, split, cls, fname = parts
        patient = XRAY_PATIENT.match(fname)
        if patient is None:
            raise SystemExit(f"{archive}:{name}: no patient id in the file name")
        by_patient[(split, cls)][patient.group(1)].append(name)
    counts = {}
    for (split, cls), target in XRAY_PLAN.items():
        patients = sorted(by_patient[(split, cls)])
        rng.shuffle(patients)
        chosen: list[str] = []
        for patient in patients:  # whole patients, so the sample keeps multi-image patients
            names = sorted(by_patient[(split, cls)][patient])
            if len(names) > XRAY_MAX_IMAGES_PER_PATIENT or len(chosen) + len(names) > target:
                continue
            chosen += names
            if len(chosen) == target:
                break
        for name in chosen:
            out = dest / "chest_xray" / split / cls / Path(name).name
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(downscale(zf.read(name), "L"))
        counts.setdefault(split, {})[cls] = len(chosen)
    return counts


def sample_mri(archive: Path, dest: Path, rng: random.Random) -> dict:
    zf = zipfile.ZipFile(archive)
    names = [n for n in zf.namelist() if n.lower().endswith(".jpg") and n.count("/") == 3]
    by_hash: dict[str, list[str]] = defaultdict(list)
    for name in names:
        by_hash[hashlib.sha256(zf.read(name)).hexdigest()].append(name)
    spanning = sorted(
        group
        for group in by_hash.values()
        if len({n.split("/")[1] for n in group}) > 1 and len({n.split("/")[2] for n in group}) == 1
    )
    rng.shuffle(spanning)
    chosen: dict[tuple[str, str], list[str]] = defaultdict(list)
    for group in spanning[:MRI_DUPLICATE_GROUPS]:
        for name in group:
            _, split, cls, _ = name.split("/")
            chosen[(split, cls)].append(name)
    duplicated = {n for names_ in by_hash.values() if len(names_) > 1 for n in names_}
    singles = sorted(n for n in names if n not in duplicated)
    rng.shuffle(singles)
    for name in singles:
        _, split, cls, _ = name.split("/")
        if len(chosen[(split, cls)]) < MRI_PLAN[(split, cls)]:
            chosen[(split, cls)].append(name)
    counts = {}
    root = "Brain-Tumor-Classification-DataSet-master"
    for (split, cls), picked in sorted(chosen.items()):
        for name in picked:
            out = dest / root / split / cls / Path(name).name
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(downscale(zf.read(name), "RGB"))
        counts.setdefault(split, {})[cls] = len(picked)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chest-xray", type=Path, required=True, help="chest_xray_224.zip")
    parser.add_argument("--mri", type=Path, required=True, help="brain_tumor_mri.zip")
    parser.add_argument("--dest", type=Path, default=Path("data/sample"))
    args = parser.parse_args()
    for sub in ("chest_xray", "brain_tumor_mri"):
        shutil.rmtree(args.dest / sub, ignore_errors=True)
    rng = random.Random(SEED)
    print("chest_xray", sample_chest_xray(args.chest_xray, args.dest / "chest_xray", rng))
    print("brain_tumor_mri", sample_mri(args.mri, args.dest / "brain_tumor_mri", rng))


if __name__ == "__main__":
    main()
