"""The columns and split names that fetch, split and augment share."""

# manifest.csv (fetch) and the split CSVs (split, plus `leak_group`), in this order.
MANIFEST_COLUMNS = (
    "path",  # relative to data/raw/<dataset>/
    "label",
    "source_split",  # the split the source published the image in
    "group_id",  # X-ray: patient id from the file name; MRI: first 16 hex of sha256
    "sha256",
    "width",
    "height",
    "mode",  # Pillow colour mode of the file
    "phash",  # 64-bit perceptual hash, 16 hex digits
    "dhash",  # 256-bit difference hash, 64 hex digits
    "content_dhash",  # the same of the image cropped to its non-black content
)
SPLITS = ("train", "val", "test")
