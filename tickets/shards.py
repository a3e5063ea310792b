"""`python -m tickets.shards SRC DST`: an ImageNet-style class-folder tree as Parquet shards.

SRC holds `train/<class>/<image>` and `val/<class>/<image>` (or `test/`), as ILSVRC's synset folders
do once the validation images are sorted into them. DST receives, per split, shards of about
`--shard-mb` MB in `DST/<split>/`, rows in a random (seeded) order so that every row group is a
sample of all classes (what the streamed shuffle relies on, see `tickets.stream`), row groups of
`--row-group` images, the columns `image` (the file's bytes as they are), `label` and `path`;
then `classes.json` (label names in label order), `<split>/shards.json` (rows, bytes and sha256 of
every shard; the node cache checks copies against it) and `report.json`.

Each shard is one Ray task, so a cluster converts in parallel (`--address`); finished shards are
skipped when the command runs again. Every image is decoded once: one that cannot be read is left
out and listed in report.json and on the terminal, never silently.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import time
from pathlib import Path

from tickets import seeds, stream
from tickets.data import IMAGE_SUFFIXES
from tickets.errors import UsageError  # SRC or DST cannot be used: exit 2

SPLITS = ("train", "val", "test")
PROGRESS_DIR = ".progress"  # one JSON per finished shard: what a re-run skips
REPORT_FILE = "report.json"


def plan(src: Path, shard_mb: float, seed: int) -> tuple[list[str], list[dict], list[str]]:
    """The classes, the shards to write (split, name, files and labels) and the files ignored for
    their suffix. The same tree and arguments give the same plan, so a re-run finds its shards."""
    train = src / "train"
    if not train.is_dir():
        raise UsageError(f"SRC: {str(src)!r} has no train/ folder (expected train/<class>/<image>)")
    classes = sorted(p.name for p in train.iterdir() if p.is_dir())
    if not classes:
        raise UsageError(f"SRC: {str(train)!r} has no class folders (expected train/<class>/<image>)")
    evals = [s for s in SPLITS[1:] if (src / s).is_dir()]
    if not evals:
        raise UsageError(f"SRC: {str(src)!r} has no val/ (or test/) folder of class folders to evaluate on")
    label = {name: i for i, name in enumerate(classes)}
    shards, ignored = [], []
    for split in ("train", *evals):
        flat = [f.name for f in (src / split).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES]
        if flat:
            raise UsageError(f"SRC: {split}/ holds images directly ({flat[0]}, ...); sort them into "
                             f"{split}/<class>/ folders first (ILSVRC's validation images: valprep.sh)")
        entries = []
        for folder in sorted(p for p in (src / split).iterdir() if p.is_dir()):
            if folder.name not in label:
                raise UsageError(f"SRC: {split}/{folder.name} is a class that train/ does not have")
            for f in sorted(folder.iterdir()):
                rel = f"{split}/{folder.name}/{f.name}"
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    entries.append((rel, label[folder.name], f.stat().st_size))
                elif f.is_file():
                    ignored.append(rel)
        if not entries:
            raise UsageError(f"SRC: {split}/ has no images (suffixes {', '.join(IMAGE_SUFFIXES)})")
        order = seeds.shard_order(seed, SPLITS.index(split)).permutation(len(entries))
        groups, size = [[]], 0
        for i in order:
            if groups[-1] and size >= shard_mb * 1e6:
                groups.append([])
                size = 0
            groups[-1].append(entries[i][:2])
            size += entries[i][2]
        for k, files in enumerate(g for g in groups if g):
            shards.append({"split": split, "name": f"{split}/{split}-{k:05d}-of-{len(groups):05d}.parquet",
                           "files": files})
    return classes, shards, ignored


def _key(shard: dict, row_group: int) -> str:
    return hashlib.sha256(json.dumps([shard["files"], row_group]).encode()).hexdigest()


def write_shard(src: str, dst: str, shard: dict, row_group: int) -> dict:
    """Write one shard (to a temporary name, renamed when complete); returns its record for the
    manifest, with the files left out and why."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(dst) / shard["name"]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".part{os.getpid()}")
    schema = pa.schema([("image", pa.binary()), ("label", pa.int32()), ("path", pa.string())])
    corrupt, rows = [], 0
    with pq.ParquetWriter(tmp, schema, compression="none", use_dictionary=["label"]) as writer:
        for start in range(0, len(shard["files"]), row_group):
            batch = {"image": [], "label": [], "path": []}
            for rel, label in shard["files"][start:start + row_group]:
                encoded, problem = _readable(Path(src) / rel)
                if encoded is None:
                    corrupt.append({"path": rel, "reason": problem})
                    continue
                batch["image"].append(encoded)
                batch["label"].append(label)
                batch["path"].append(rel)
            if batch["label"]:
                writer.write_table(pa.table(batch, schema=schema), row_group_size=row_group)
                rows += len(batch["label"])
    os.replace(tmp, out)
    record = {"file": out.name, "split": shard["split"], "rows": rows, "bytes": out.stat().st_size,
              "sha256": stream.sha256_of(out), "key": _key(shard, row_group), "corrupt": corrupt}
    progress = Path(dst) / PROGRESS_DIR / (out.name + ".json")
    progress.parent.mkdir(exist_ok=True)
    progress.write_text(json.dumps(record))
    return record


def _readable(path: Path) -> tuple[bytes | None, str]:
    """(the file's bytes, "") if Pillow decodes it whole, else (None, why). The bytes are stored as
    they are: TensorFlow decodes what Pillow does here (CMYK and greyscale JPEGs to RGB included)."""
    from PIL import Image

    try:
        encoded = path.read_bytes()
        with Image.open(io.BytesIO(encoded)) as im:
            im.load()
            if min(im.size) < 1:
                return None, f"empty image {im.size}"
    except Exception as e:  # Pillow raises OSError, ValueError, SyntaxError... for bad files
        return None, f"{type(e).__name__}: {e}"
    return encoded, ""


def finished(dst: Path, shard: dict, row_group: int) -> dict | None:
    """The record of a shard an earlier run completed with the same plan, if any."""
    progress = dst / PROGRESS_DIR / (Path(shard["name"]).name + ".json")
    if not progress.is_file() or not (dst / shard["name"]).is_file():
        return None
    record = json.loads(progress.read_text())
    same = record["key"] == _key(shard, row_group) and (dst / shard["name"]).stat().st_size == record["bytes"]
    return record if same else None


def convert(args: argparse.Namespace, classes: list[str], shards: list[dict], ignored: list[str]) -> int:
    import ray

    from tickets import session

    src, dst = Path(args.src).resolve(), Path(args.dst).resolve()
    records = {s["name"]: finished(dst, s, args.row_group) for s in shards}
    todo = [s for s in shards if records[s["name"]] is None]
    total = sum(len(s["files"]) for s in shards)
    print(f"shards: {total:,} images of {len(classes)} classes in {src} -> {len(shards)} shards in {dst} "
          f"({len(shards) - len(todo)} already written)", flush=True)
    if todo:
        started, cluster, _ = session.start_ray(args)
        print(f"shards: converting on {cluster}, one Ray task per shard", flush=True)
        try:
            task = ray.remote(write_shard).options(num_cpus=1, max_retries=2)
            pending = {task.remote(str(src), str(dst), s, args.row_group): s for s in todo}
            bar = Progress(sum(len(s["files"]) for s in todo), len(todo))
            while pending:
                done, _ = ray.wait(list(pending), timeout=2.0)
                for ref in done:
                    shard = pending.pop(ref)
                    try:
                        records[shard["name"]] = ray.get(ref)
                    except ray.exceptions.RayError as e:  # its retries spent; finished shards are kept
                        bar.end()
                        cause = str(e).strip().splitlines()[-1]
                        kept = sum(r is not None for r in records.values())
                        print(f"error: shard {shard['name']} failed ({cause}); the {kept} shards written are "
                              f"kept: run the command again to continue", file=sys.stderr)
                        return 1
                    bar.add(len(shard["files"]))
                bar.show()
            bar.end()
        finally:
            if started:
                ray.shutdown()
    return summarise(dst, classes, shards, records, ignored)


def summarise(dst: Path, classes: list[str], shards: list[dict], records: dict, ignored: list[str]) -> int:
    (dst / stream.CLASSES_FILE).write_text(json.dumps(classes))
    manifest_keys = ("file", "rows", "bytes", "sha256")
    for split in {s["split"] for s in shards}:
        mine = [records[s["name"]] for s in shards if s["split"] == split]
        (dst / split / stream.MANIFEST_FILE).write_text(json.dumps(
            {"split": split, "rows": sum(r["rows"] for r in mine),
             "shards": [{k: r[k] for k in manifest_keys} for r in mine]}, indent=1))
    corrupt = sorted((c for r in records.values() for c in r["corrupt"]), key=lambda c: c["path"])
    (dst / REPORT_FILE).write_text(json.dumps({"left_out": corrupt, "ignored": sorted(ignored)}, indent=1))
    rows = sum(r["rows"] for r in records.values())
    print(f"shards: {rows:,} images in {len(shards)} shards, {len(classes)} classes ({dst / stream.CLASSES_FILE})")
    if corrupt:
        print(f"shards: {len(corrupt)} images left out (unreadable), listed in {dst / REPORT_FILE}:")
        for c in corrupt[:10]:
            print(f"  {c['path']}: {c['reason']}")
        if len(corrupt) > 10:
            print(f"  ... and {len(corrupt) - 10} more")
    if ignored:
        print(f"shards: {len(ignored)} files without an image suffix ignored, listed in {dst / REPORT_FILE}")
    return 0


class Progress:
    """A progress bar on a terminal; elsewhere (a SLURM log) a line every 10 % of the images."""

    def __init__(self, images: int, shards: int):
        self.total, self.shards, self.done, self.shards_done = images, shards, 0, 0
        self.start, self.tty, self.last_tenth = time.monotonic(), sys.stderr.isatty(), 0

    def add(self, images: int) -> None:
        self.done += images
        self.shards_done += 1

    def line(self) -> str:
        frac = self.done / max(1, self.total)
        rate = self.done / max(1e-9, time.monotonic() - self.start)
        bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
        return (f"shards [{bar}] {self.shards_done}/{self.shards} shards, {self.done:,}/{self.total:,} images, "
                f"{rate:,.0f} images/s")

    def show(self) -> None:
        if self.tty:
            print("\r" + self.line(), end="", file=sys.stderr, flush=True)
        elif int(10 * self.done / max(1, self.total)) > self.last_tenth:
            self.last_tenth = int(10 * self.done / max(1, self.total))
            print(self.line(), file=sys.stderr, flush=True)

    def end(self) -> None:
        if self.tty:
            print(file=sys.stderr)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tickets.shards", description=__doc__.split("\n\n")[0])
    p.add_argument("src", metavar="SRC", help="tree of train/<class>/<image> and val/<class>/<image>")
    p.add_argument("dst", metavar="DST", help="where the shards go (a new or partly written directory)")
    p.add_argument("--shard-mb", type=float, default=256.0, help="target shard size in MB (default 256)")
    p.add_argument("--row-group", type=int, default=256, help="images per row group (default 256)")
    p.add_argument("--seed", type=int, default=0, help="seed of the row order (default 0)")
    p.add_argument("--address", help="an existing Ray cluster (else a local Ray on this machine)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    args = p.parse_args(argv)
    args.num_gpus, args.verbose, args.dashboard = 0, False, True  # what session.start_ray reads
    return args


def check(args: argparse.Namespace) -> tuple[list[str], list[dict], list[str]]:
    """The plan, once the arguments and what DST already holds are known to be usable."""
    src, dst = Path(args.src).resolve(), Path(args.dst).resolve()
    if not src.is_dir():
        raise UsageError(f"SRC: {args.src!r} is not a directory")
    if dst == src or src in dst.parents:
        raise UsageError(f"DST: {args.dst!r} is inside SRC; write the shards elsewhere")
    if args.shard_mb <= 0:
        raise UsageError(f"--shard-mb: {args.shard_mb:g} must be > 0")
    if args.row_group < 1:
        raise UsageError(f"--row-group: {args.row_group} must be >= 1")
    if dst.exists() and not dst.is_dir():
        raise UsageError(f"DST: {args.dst!r} exists and is not a directory")
    probe = dst
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"DST: {args.dst!r} cannot be written ({probe} is not writable)")
    classes, shards, ignored = plan(src, args.shard_mb, args.seed)
    # Shards of another plan (other sizes, seed or images) would be read beside these ones.
    names = {s["name"] for s in shards}
    for split in SPLITS:
        for f in sorted((dst / split).glob("*.parquet")) if (dst / split).is_dir() else []:
            if f"{split}/{f.name}" not in names:
                raise UsageError(f"DST: {str(f)!r} is a shard of another conversion (other --shard-mb, --seed "
                                 f"or images); write to a new DST")
    return classes, shards, ignored


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        planned = check(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return convert(args, *planned)


if __name__ == "__main__":
    sys.exit(main())
