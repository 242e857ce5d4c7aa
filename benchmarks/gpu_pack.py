"""CIFAR-10's JPEG copy as one file that travels with the code to a GPU machine, and out again there.

    python -m benchmarks.gpu_pack pack <data root>            # -> .gpu_data/cifar10/ (pack, manifest, stamp)
    python -m benchmarks.gpu_pack stamp                       # refresh the code stamp only (before each GPU call)
    python -m benchmarks.gpu_pack unpack <new data root>      # on the GPU machine: <root>/cifar10-jpeg/...
    python -m benchmarks.gpu_pack pack <data root> --per-class 30 --test-per-class 10 --out <dir>   # a tiny pack

The pack is a gzipped tar of the files' own bytes (nothing is re-encoded), members in sorted order
with times and owners zeroed, so the same files give the same pack. Each JPEG is about 920 bytes of
which about 600 are the same header (quantisation and Huffman tables), which gzip finds again file
after file: the 55.3 MB of JPEGs pack into 19.4 MB, well inside the 64 MiB that travels.

`manifest.json` records what unpacking must give back: per split the file count, the bytes, a
digest of every name and byte, and a digest of the pixels the engine decodes from them
(`jpeg_split.read_jpeg_split`, decoded afresh from an unpacked copy). The GPU run compares both, so
a row says whether that machine saw the same bytes and decoded the same pixels. `stamp.json` records
the code version and a digest of the tracked code, since a GPU machine receives no git history.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACK_DIR = ROOT / ".gpu_data" / "cifar10"  # ignored by git (.gitignore: /.gpu_data/); carried by name
PACK, MANIFEST, STAMP = "cifar10-jpeg.tar.gz", "manifest.json", "stamp.json"
FOLDER = "cifar10-jpeg"  # dd_core.data.JPEG_FOLDER: load_dataset("cifar10") reads <root>/cifar10-jpeg
SPLITS = ("train", "test")


def listing(folder: Path, per_class: int | None = None) -> list[Path]:
    """The split's image files, classes and files in sorted order; the first `per_class` of each class."""
    files = []
    for cls in sorted(p for p in folder.iterdir() if p.is_dir()):
        names = sorted(p for p in cls.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        files += names[:per_class] if per_class else names
    return files


def files_digest(split_dir: Path, files: list[Path]) -> str:
    """sha256 over every file's class/name, size and bytes, in order."""
    h = hashlib.sha256()
    for f in files:
        data = f.read_bytes()
        h.update(f"{f.relative_to(split_dir)}:{len(data)};".encode())
        h.update(data)
    return h.hexdigest()


def pixels_digest(split_dir: Path) -> dict:
    """Decode a split with the engine (as load_dataset does) and digest its uint8 pixels and labels."""
    from dd_core.data import CIFAR10_CLASSES
    from dd_core.jpeg_split import read_jpeg_split

    pixels, labels = read_jpeg_split(split_dir, CIFAR10_CLASSES, (3, 32, 32))  # (n, 3, 32, 32) uint8, (n,)
    h = hashlib.sha256(pixels.contiguous().numpy().tobytes())
    h.update(labels.numpy().tobytes())
    return {"pixels_sha256": h.hexdigest(), "images": len(labels)}


def _tarinfo(name: str, size: int, is_dir: bool) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.uid, info.gid, info.uname, info.gname = size, 0, 0, 0, "", ""
    info.type, info.mode = (tarfile.DIRTYPE, 0o755) if is_dir else (tarfile.REGTYPE, 0o644)
    if is_dir:
        info.size = 0
    return info


def write_pack(source: Path, out: Path, per_class: dict[str, int | None]) -> dict:
    """Tar + gzip the splits of `source/cifar10-jpeg` into `out/PACK`; returns the byte-level record."""
    record = {}
    with open(out / PACK, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs_done: set[str] = set()
        for split in SPLITS:
            split_dir = source / FOLDER / split
            files = listing(split_dir, per_class[split])
            for f in files:
                rel = f.relative_to(source)
                for parent in reversed(rel.parents[:-1]):  # cifar10-jpeg, cifar10-jpeg/train, .../<class>
                    if str(parent) not in dirs_done:
                        tar.addfile(_tarinfo(str(parent), 0, True))
                        dirs_done.add(str(parent))
                data = f.read_bytes()
                tar.addfile(_tarinfo(str(rel), len(data), False), io.BytesIO(data))
            record[split] = {"files": len(files), "bytes": sum(f.stat().st_size for f in files),
                             "files_sha256": files_digest(split_dir, files)}
    return record


def unpack(pack_dir: Path, root: Path) -> dict:
    """Extract the pack under `root` (system tar when there is one: four times faster than tarfile)
    and check its bytes against the manifest; returns a row saying what matched."""
    manifest = json.loads((pack_dir / MANIFEST).read_text())
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if shutil.which("tar"):
        subprocess.run(["tar", "-xzf", str(pack_dir / PACK), "-C", str(root)], check=True)
    else:
        with tarfile.open(pack_dir / PACK) as tar:
            tar.extractall(root, filter="data")
    row = {"check": "data_unpack", "root": "<tmp>" if str(root).startswith(tempfile.gettempdir()) else str(root),
           "seconds": round(time.perf_counter() - t0, 2), "pack_bytes": (pack_dir / PACK).stat().st_size}
    for split in SPLITS:
        split_dir = root / FOLDER / split
        files = listing(split_dir)
        want = manifest["splits"][split]
        row[f"{split}_files"] = len(files)
        row[f"{split}_bytes_match"] = len(files) == want["files"] and files_digest(split_dir, files) == want["files_sha256"]
    return row


def code_files() -> list[str]:
    """The tracked code a run depends on (Python and shell), as git lists it; none without git."""
    try:
        out = subprocess.run(["git", "ls-files", "--", "*.py", "*.sh"], cwd=ROOT, capture_output=True, text=True,
                             check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted(out.stdout.split())


def code_digest(paths: list[str]) -> str:
    h = hashlib.sha256()
    for rel in paths:
        p = ROOT / rel
        h.update(f"{rel}:".encode())
        h.update(p.read_bytes() if p.is_file() else b"<missing>")
    return h.hexdigest()


def write_stamp(out: Path) -> dict:
    """The code version and a digest of the tracked code, for a machine that receives no git history."""
    from dd_core.version import code_version

    paths = code_files()
    stamp = {"code_version": code_version(), "files": paths, "code_sha256": code_digest(paths),
             "stamped": time.strftime("%Y-%m-%d %H:%M:%S")}
    (out / STAMP).write_text(json.dumps(stamp, indent=1))
    return stamp


CHANGED = "+changed-after-stamp"


def stamped_version(pack_dir: Path = PACK_DIR) -> str:
    """The version to record on a machine without git: the stamp's, if the code is still what was
    stamped; with '+changed' when it is not; 'unknown' without a stamp."""
    try:
        stamp = json.loads((pack_dir / STAMP).read_text())
    except (OSError, ValueError):
        return "unknown"
    same = code_digest(stamp["files"]) == stamp["code_sha256"]
    return stamp["code_version"] + ("" if same else CHANGED)


def pack(source: Path, out: Path, per_class: int | None, test_per_class: int | None) -> dict:
    if not (source / FOLDER / "train").is_dir():
        raise SystemExit(f"error: {source / FOLDER}/train not found; give the data root that holds {FOLDER}/")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    splits = write_pack(source, out, {"train": per_class, "test": test_per_class})
    # Decode from an unpacked copy with an empty engine cache: the pixels the GPU machine should see.
    with tempfile.TemporaryDirectory() as tmp:
        saved = os.environ.get("DD_CACHE_DIR")
        os.environ["DD_CACHE_DIR"] = str(Path(tmp) / "cache")
        try:
            (out / MANIFEST).write_text(json.dumps({"splits": splits}))  # unpack checks against it
            row = unpack(out, Path(tmp) / "data")
            for split in SPLITS:
                if not row[f"{split}_bytes_match"]:
                    raise SystemExit(f"error: the unpacked {split} split differs from its source; pack again")
                splits[split].update(pixels_digest(Path(tmp) / "data" / FOLDER / split))
        finally:
            if saved is None:
                os.environ.pop("DD_CACHE_DIR", None)
            else:
                os.environ["DD_CACHE_DIR"] = saved
    manifest = {"dataset": "cifar10", "folder": FOLDER, "pack": PACK, "pack_bytes": (out / PACK).stat().st_size,
                "pack_sha256": hashlib.sha256((out / PACK).read_bytes()).hexdigest(), "splits": splits,
                "per_class": {"train": per_class, "test": test_per_class},
                "seconds": round(time.perf_counter() - t0, 1)}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    write_stamp(out)
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("pack", help="write the pack, its manifest and the code stamp")
    a.add_argument("root", type=Path, help=f"the data root that holds {FOLDER}/train and {FOLDER}/test")
    a.add_argument("--out", type=Path, default=PACK_DIR)
    a.add_argument("--per-class", type=int, default=None, help="only the first N training images of each class")
    a.add_argument("--test-per-class", type=int, default=None, help="only the first N test images of each class")
    s = sub.add_parser("stamp", help="refresh the code stamp beside an existing pack")
    s.add_argument("--out", type=Path, default=PACK_DIR)
    u = sub.add_parser("unpack", help="extract the pack under a data root and check its bytes")
    u.add_argument("root", type=Path)
    u.add_argument("--pack", type=Path, default=PACK_DIR)
    args = p.parse_args(argv)
    if args.command == "pack":
        manifest = pack(args.root, args.out, args.per_class, args.test_per_class)
        print(json.dumps({k: manifest[k] for k in ("pack_bytes", "splits", "seconds")}))
    elif args.command == "stamp":
        print(json.dumps({k: v for k, v in write_stamp(args.out).items() if k != "files"}))
    else:
        if not (args.pack / PACK).is_file():
            raise SystemExit(f"error: no {PACK} in {args.pack}; carry that folder (run(carry=[...])) or pack it first")
        print(json.dumps(unpack(args.pack, args.root)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
