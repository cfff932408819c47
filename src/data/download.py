"""Download training and benchmark sets into `<root>/<name>/HR/`.

    python -m src.data.download DIV2K_train [DIV2K_valid Flickr2K Set5 ...] [root=DIR] [base_url=URL]
    python -m src.data.download benchmarks          # Set5, Set14, BSD100, Urban100 (one archive)

Archives go to `<root>/downloads/` and are resumed with HTTP Range requests when a transfer breaks. Before
anything is extracted an archive is checked against the table below (size, then sha256, or md5 where no
sha256 is published), then read through completely (zip CRCs / tar members). Extraction refuses archives with
absolute paths, `..` components or links, and goes through a temporary folder that is renamed into place
only when complete, so a failure never leaves a half-extracted set.

Checksums, and where they come from (none could be recomputed here: this machine has no internet access):
- DIV2K_train_HR.zip: 3,530,603,713 bytes,
  sha256 9d0b9c463f6e35b6c62cc6a930ee2224f670b34c1df841a57670f9acf0f6c335 (TFDS url_checksums/div2k.txt),
  md5 bdc2d9338d4e574fe81bf7d158758658 (Coloquinte/torchSR).
- DIV2K_valid_HR.zip: 448,993,893 bytes,
  sha256 20dd31fd84d777bc1cf5d6b7654a3f569c0aec74458ae094122ad1d0489900fc (TFDS url_checksums/div2k.txt),
  md5 9fcdda83005c5e5997799b69f955ff88 (Coloquinte/torchSR).
- Flickr2K.tar (EDSR authors): size unknown, no sha256 published; md5 5d3f39443d5e9489bff8963f8f26cb03
  (Coloquinte/torchSR datasets/flickr2k.py), plus a full read of the tar.
- benchmark.tar (EDSR authors; Set5, Set14, B100, Urban100): size unknown, no sha256 published;
  md5 4ace41d33c2384b97e6b320cd0afd6ba (Coloquinte/torchSR datasets/benchmarks.py), plus a full read.
Manga109 cannot be downloaded: its licence requires an application at manga109.org.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import socket
import stat
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

BASE_URL_ENV = "SR_DOWNLOAD_BASE_URL"
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download or extraction that failed; the message names the URL or file and what to do."""


@dataclass(frozen=True)
class Archive:
    filename: str
    url: str
    size: int | None = None
    sha256: str | None = None
    md5: str | None = None


@dataclass(frozen=True)
class Source:
    """A dataset: the HR images under `prefix` inside `archive`, placed in `<root>/<name>/HR/`."""
    name: str
    archive: Archive
    prefix: str
    n_images: int | None = None


DIV2K_TRAIN = Archive("DIV2K_train_HR.zip", "https://data.vision.ee.ethz.ch/cvl/DIV2K/DIV2K_train_HR.zip",
                      3530603713, "9d0b9c463f6e35b6c62cc6a930ee2224f670b34c1df841a57670f9acf0f6c335",
                      "bdc2d9338d4e574fe81bf7d158758658")
DIV2K_VALID = Archive("DIV2K_valid_HR.zip", "https://data.vision.ee.ethz.ch/cvl/DIV2K/DIV2K_valid_HR.zip",
                      448993893, "20dd31fd84d777bc1cf5d6b7654a3f569c0aec74458ae094122ad1d0489900fc",
                      "9fcdda83005c5e5997799b69f955ff88")
FLICKR2K = Archive("Flickr2K.tar", "https://cv.snu.ac.kr/research/EDSR/Flickr2K.tar",
                   md5="5d3f39443d5e9489bff8963f8f26cb03")
BENCHMARK = Archive("benchmark.tar", "https://cv.snu.ac.kr/research/EDSR/benchmark.tar",
                    md5="4ace41d33c2384b97e6b320cd0afd6ba")

SOURCES = {s.name: s for s in (
    Source("DIV2K_train", DIV2K_TRAIN, "DIV2K_train_HR/", 800),
    Source("DIV2K_valid", DIV2K_VALID, "DIV2K_valid_HR/", 100),
    Source("Flickr2K", FLICKR2K, "Flickr2K/Flickr2K_HR/", 2650),
    Source("Set5", BENCHMARK, "benchmark/Set5/HR/", 5),
    Source("Set14", BENCHMARK, "benchmark/Set14/HR/", 14),
    Source("BSD100", BENCHMARK, "benchmark/B100/HR/", 100),
    Source("Urban100", BENCHMARK, "benchmark/Urban100/HR/", 100),
)}
ALIASES = {"benchmarks": ["Set5", "Set14", "BSD100", "Urban100"], "DIV2K": ["DIV2K_train", "DIV2K_valid"]}
NOT_DOWNLOADABLE = {
    "Manga109": "Manga109 is licensed for academic use on application (http://www.manga109.org/en/download.html); "
                "request it there and put its 109 PNG pages in {root}/Manga109/HR/",
}


def _log(msg: str) -> None:
    print(f"[download] {msg}", file=sys.stderr, flush=True)


def _open(url: str, start: int, timeout: float):
    headers = {"User-Agent": "reflash-sr"} | ({"Range": f"bytes={start}-"} if start else {})
    req = urllib.request.Request(url, headers=headers)
    return urllib.request.urlopen(req, timeout=timeout)


def download(url: str, dest: str | os.PathLike, size: int | None = None, timeout: float = 10.0,
             retries: int = 3) -> Path:
    """Fetch `url` to `dest`, resuming `dest.part` with a Range request; retried `retries` times on a break."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        start = part.stat().st_size if part.exists() else 0
        if size is not None and start >= size:
            break
        try:
            resp = _open(url, start, timeout)
        except urllib.error.HTTPError as e:
            if e.code == 416 and start:  # the .part already holds the whole file
                break
            raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from e
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise DownloadError(f"cannot reach {url} ({reason}); are you offline? Fetch it by other means into "
                                f"{dest} and rerun, or point {BASE_URL_ENV} / base_url= at a mirror") from e
        with resp:
            resumed = resp.status == 206 and resp.headers.get("Content-Range", "").startswith(f"bytes {start}-")
            if start and not resumed:
                _log(f"server ignored the resume request; restarting {dest.name}")
                start = 0
            total = resp.headers.get("Content-Length")
            total = int(total) + start if total is not None else size
            got, last = start, time.time()
            try:
                with open(part, "ab" if start else "wb") as f:
                    while chunk := resp.read(CHUNK):
                        f.write(chunk)
                        got += len(chunk)
                        if time.time() - last > 5:
                            last = time.time()
                            _log(f"{dest.name}: {got / 1e6:.0f} MB" + (f" of {total / 1e6:.0f} MB" if total else ""))
            except (http.client.IncompleteRead, ConnectionError, socket.timeout, OSError) as e:
                _log(f"{dest.name}: transfer broke at {got} bytes ({type(e).__name__}); "
                     f"{'resuming' if attempt < retries else 'giving up'}")
                continue
            if total is not None and got < total:
                _log(f"{dest.name}: connection closed at {got} of {total} bytes; resuming")
                continue
            break
    else:
        raise DownloadError(f"{url}: transfer kept breaking after {retries + 1} attempts; rerun to resume from "
                            f"{part} ({part.stat().st_size if part.exists() else 0} bytes)")
    os.replace(part, dest)
    return dest


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, archive: Archive) -> None:
    """Size and checksums from the table, then a full read of the archive; raise DownloadError if any fails."""
    n = path.stat().st_size
    if archive.size is not None and n != archive.size:
        raise DownloadError(f"{path}: {n} bytes, expected {archive.size} for {archive.url} (truncated or a different "
                            f"file); it was deleted, rerun to download again")
    for algo in ("sha256", "md5"):
        want = getattr(archive, algo)
        if want:
            got = _digest(path, algo)
            if got != want.lower():
                raise DownloadError(f"{path}: {algo} {got} does not match the expected {want} for {archive.url}; "
                                    f"the file is corrupt or was changed upstream; it was deleted, rerun to retry")
    if not (archive.sha256 or archive.md5):
        _log(f"{path.name}: no published checksum; checking size and archive integrity only")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
            if bad:
                raise DownloadError(f"{path}: member {bad} fails its CRC check")
        else:
            with tarfile.open(path) as t:
                for m in t:
                    if m.isfile():
                        with t.extractfile(m) as f:
                            while f.read(CHUNK):
                                pass
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        raise DownloadError(f"{path}: not a readable zip/tar archive ({e})") from e


def _safe_relpath(name: str, archive: Path) -> PurePosixPath:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise DownloadError(f"{archive}: refusing to extract absolute path {name!r}")
    if ".." in p.parts:
        raise DownloadError(f"{archive}: refusing to extract {name!r}: it points outside the target folder")
    return p


def _members(path: Path):
    """Yield (name, is_dir, opener) for every member; links and special files are refused."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise DownloadError(f"{path}: refusing to extract symbolic link {info.filename!r}")
                yield info.filename, info.is_dir(), (lambda i=info: z.open(i))
        return
    with tarfile.open(path) as t:
        for m in t:
            if m.issym() or m.islnk():
                raise DownloadError(f"{path}: refusing to extract link {m.name!r} -> {m.linkname!r}")
            if not (m.isfile() or m.isdir()):
                raise DownloadError(f"{path}: refusing to extract special file {m.name!r}")
            yield m.name, m.isdir(), (lambda m=m: t.extractfile(m))


def extract(path: str | os.PathLike, prefix: str, target: str | os.PathLike) -> int:
    """Extract the files under `prefix` in the archive into `target` (which must not exist); returns the count.

    Every member of the archive is checked first (also those outside `prefix`): one unsafe name means the
    archive is not trusted at all.
    """
    path, target = Path(path), Path(target)
    for name, _, _ in _members(path):
        _safe_relpath(name, path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    count = 0
    try:
        for name, is_dir, opener in _members(path):
            rel = _safe_relpath(name, path)
            if is_dir or not str(rel).startswith(prefix.rstrip("/") + "/"):
                continue
            out = tmp.joinpath(*rel.relative_to(prefix.rstrip("/")).parts)
            if not out.resolve().is_relative_to(tmp.resolve()):
                raise DownloadError(f"{path}: refusing to extract {name!r} outside {target}")
            out.parent.mkdir(parents=True, exist_ok=True)
            with opener() as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
            count += 1
        if count == 0:
            raise DownloadError(f"{path}: no files under {prefix!r}; not the expected archive")
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return count


def fetch(source: Source, root: str | os.PathLike, base_url: str | None = None, timeout: float = 10.0,
          force: bool = False, keep_archive: bool = True) -> Path:
    """Make `<root>/<name>/HR/` hold the set; download, verify and extract as needed. Returns the HR folder."""
    root = Path(root)
    hr = root / source.name / "HR"
    if hr.is_dir() and any(hr.iterdir()) and not force:
        _log(f"{source.name}: {hr} already holds {sum(1 for _ in hr.iterdir())} files; --force redoes it")
        return hr
    a = source.archive
    base_url = base_url or os.environ.get(BASE_URL_ENV)
    url = f"{base_url.rstrip('/')}/{a.filename}" if base_url else a.url
    archive_path = root / "downloads" / a.filename
    if not archive_path.exists():
        _log(f"{source.name}: downloading {url}")
        download(url, archive_path, a.size, timeout)
    try:
        verify(archive_path, a)
    except DownloadError:
        archive_path.unlink(missing_ok=True)
        raise
    if force and hr.exists():
        shutil.rmtree(hr)
    n = extract(archive_path, source.prefix, hr)
    if source.n_images is not None and n != source.n_images:
        _log(f"{source.name}: extracted {n} files, expected {source.n_images}")
    _log(f"{source.name}: {n} files in {hr}")
    if not keep_archive and not any(s.archive == a and not (root / s.name / "HR").is_dir() for s in SOURCES.values()):
        archive_path.unlink(missing_ok=True)
    return hr


OPTIONS = {"root": (str, None, "data root (default: SR_DATA_ROOT, else ../shared/datasets or ./data)"),
           "base_url": (str, None, f"mirror holding the archives by file name (or ${BASE_URL_ENV})"),
           "timeout": (float, 10.0, "seconds to wait for the server"),
           "force": (bool, False, "extract again even if the HR folder exists"),
           "delete_archives": (bool, False, "remove archives once every set in them is out")}


def main(argv: list[str] | None = None) -> int:
    from src.options import key_values
    from src.data.datasets import default_data_root

    argv = sys.argv[1:] if argv is None else list(argv)
    names = sorted(SOURCES) + sorted(ALIASES) + sorted(NOT_DOWNLOADABLE)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m src.data.download NAME [NAME ...] [key=value ...]\n{__doc__.split(chr(10) * 2)[0]}\n"
              f"names: {', '.join(names)}\n" + "\n".join(f"  {k}={d}: {h}" for k, (_, d, h) in OPTIONS.items()))
        return 0 if argv else 2
    wanted, args = key_values(argv, OPTIONS, "src.data.download")
    root = Path(args["root"]) if args["root"] else default_data_root()
    wanted = [n for name in wanted for n in ALIASES.get(name, [name])]
    if not wanted:
        print(f"error: name a dataset: {', '.join(names)}", file=sys.stderr)
        return 2
    for name in wanted:
        if name in NOT_DOWNLOADABLE:
            print(f"error: {NOT_DOWNLOADABLE[name].format(root=root)}", file=sys.stderr)
            return 2
        if name not in SOURCES:
            print(f"error: unknown dataset {name!r}; choose from {', '.join(names)}", file=sys.stderr)
            return 2
    for name in wanted:
        try:
            fetch(SOURCES[name], root, args["base_url"], args["timeout"], args["force"], not args["delete_archives"])
        except DownloadError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
