"""pipeline/package_data.py: offline errors, sha256 check, archive reading, the NRRD reader."""
import gzip
import hashlib
import io
import sys
import tarfile
import zipfile

import numpy as np
import pytest

from segbalance.contract import UserError
from segbalance.pipeline import package_data
from segbalance.pipeline.package_data import Archive, read_nrrd


def _nrrd(array: np.ndarray, type_name: str, encoding: str, endian: str = "little") -> bytes:
    """A NRRD file written by hand from the format description (sizes fastest axis first)."""
    sizes = " ".join(str(n) for n in array.shape[::-1])
    header = (f"NRRD0004\n# written by the test\ntype: {type_name}\ndimension: {array.ndim}\nsizes: {sizes}\n"
              f"space: left-posterior-superior\nkinds: {' '.join(['domain'] * array.ndim)}\n"
              f"endian: {endian}\nencoding: {encoding}\n\n")
    payload = array.astype(array.dtype.newbyteorder(">" if endian == "big" else "<")).tobytes()
    return header.encode() + (gzip.compress(payload) if encoding == "gzip" else payload)


@pytest.mark.parametrize("dtype, type_name, encoding, endian", [
    (np.int16, "short", "gzip", "little"), (np.int32, "int", "raw", "little"), (np.uint8, "uchar", "raw", "big"),
    (np.float32, "float", "gzip", "big"), (np.uint16, "unsigned short", "raw", "little")])
def test_nrrd_reader_against_hand_written_files(dtype, type_name, encoding, endian):
    rng = np.random.default_rng(0)
    volume = rng.integers(-1000 if np.issubdtype(dtype, np.signedinteger) else 0, 250, size=(3, 4, 5)).astype(dtype)
    got = read_nrrd(_nrrd(volume, type_name, encoding, endian))
    assert got.shape == (3, 4, 5) and got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, volume)
    assert got[2, 3, 4] == volume[2, 3, 4]  # sizes X Y Z -> [Z, Y, X]: the last index runs fastest


def test_nrrd_reader_refuses_what_it_cannot_read():
    volume = np.zeros((2, 2), np.int16)
    with pytest.raises(ValueError, match="not a NRRD file"):
        read_nrrd(b"P5\n2 2\n255\n....", "x.pgm")
    with pytest.raises(ValueError, match="encoding 'bzip2' is not supported"):
        read_nrrd(_nrrd(volume, "short", "raw").replace(b"encoding: raw", b"encoding: bzip2"))
    with pytest.raises(ValueError, match="a.nrrd: NRRD payload holds 6 bytes, sizes \\[2, 2\\] need 8"):
        read_nrrd(_nrrd(volume, "short", "raw")[:-2], "a.nrrd")
    with pytest.raises(ValueError, match="type 'block'"):
        read_nrrd(_nrrd(volume, "short", "raw").replace(b"type: short", b"type: block"))


@pytest.fixture
def fake_archives(tmp_path, monkeypatch):
    """A wheel and a tar.gz written here, registered under their measured sha256."""
    wheel = tmp_path / "cache" / "demo-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("demo/data/a.txt", b"alpha")
        z.writestr("demo/data/b.bin", b"\x00\x01")
    sdist = tmp_path / "cache" / "demo-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for name, data in (("demo-1.0/data/c.txt", b"gamma"), ("demo-1.0/README", b"readme")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    monkeypatch.setitem(package_data.ARCHIVES, "demowheel",
                        Archive("demo==1.0", wheel.name, digest(wheel), ("--only-binary", ":all:"), "MIT"))
    monkeypatch.setitem(package_data.ARCHIVES, "demosdist",
                        Archive("demo==1.0", sdist.name, digest(sdist), ("--no-binary", "demo"), "MIT"))
    return tmp_path / "cache"


def test_read_members_from_wheel_and_source_archive(fake_archives):
    assert package_data.read_members("demowheel", ["demo/data/a.txt", "demo/data/b.bin"], fake_archives) == {
        "demo/data/a.txt": b"alpha", "demo/data/b.bin": b"\x00\x01"}
    assert package_data.read_members("demosdist", ["demo-1.0/data/c.txt"], fake_archives) == {
        "demo-1.0/data/c.txt": b"gamma"}
    with pytest.raises(UserError, match="holds no demo-1.0/data/zzz.txt; delete it and run"):
        package_data.read_members("demosdist", ["demo-1.0/data/zzz.txt"], fake_archives)


def test_missing_archive_offline_is_one_line_naming_the_command(tmp_path):
    with pytest.raises(UserError) as caught:
        package_data.archive_path("solaris", tmp_path / "empty")
    message = str(caught.value)
    assert "\n" not in message
    assert message == (f"solaris-0.4.0-py3-none-any.whl is not in {tmp_path / 'empty'} (the solaris data is read "
                       f"from it, never downloaded at run time); run `python -m segbalance.pipeline.package_data "
                       f"solaris --cache-dir {tmp_path / 'empty'}` where PyPI is reachable")
    with pytest.raises(UserError, match="unknown package archive 'nope'; choose one of solaris, pyradiomics, labelme"):
        package_data.archive_path("nope", tmp_path)


def test_fetch_runs_pip_download_and_checks_the_hash(fake_archives, tmp_path):
    # a cached file is verified, not downloaded again; a changed file is refused with what to do
    assert package_data.fetch("demowheel", fake_archives, pip=["false"]) == fake_archives / "demo-1.0-py3-none-any.whl"
    (fake_archives / "demo-1.0.tar.gz").write_bytes(b"tampered")
    with pytest.raises(UserError, match=r"demo-1.0.tar.gz: sha256 [0-9a-f]{64} is not the pinned .* delete the file"):
        package_data.fetch("demosdist", fake_archives)
    # a failing download (no network): one line naming the pip command it ran
    script = tmp_path / "fakepip.py"
    script.write_text("import sys\nprint('ERROR: Could not find a version (offline)', file=sys.stderr)\nsys.exit(1)\n")
    with pytest.raises(UserError) as caught:
        package_data.fetch("demowheel", tmp_path / "new", pip=[sys.executable, str(script)])
    assert str(caught.value).startswith("could not download demo-1.0-py3-none-any.whl (ERROR: Could not find a "
                                        "version (offline)); run `")
    command = f"download --no-deps --only-binary :all: --dest {tmp_path / 'new'} demo==1.0` where PyPI"
    assert command in str(caught.value)
    # a download that saves the file: pip's arguments and the hash check
    source = fake_archives / "demo-1.0-py3-none-any.whl"
    script.write_text("import shutil, sys\nargs = sys.argv[1:]\nassert args[:2] == ['download', '--no-deps'], args\n"
                      f"shutil.copy({str(source)!r}, args[args.index('--dest') + 1])\n")
    assert package_data.fetch("demowheel", tmp_path / "new", pip=[sys.executable, str(script)]).read_bytes() == \
        source.read_bytes()


def test_cli_reports_a_missing_download_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(package_data, "fetch", lambda name, cache: (_ for _ in ()).throw(UserError(f"no {name}")))
    assert package_data.main(["labelme", "--cache-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "package_data: error: no labelme\n"


def test_pinned_archives_in_the_cache_match_their_hashes():
    """The real archives (fetched by `python -m segbalance.pipeline.package_data`): hash and expected files."""
    try:  # no download in the tests: `make datasets` (or the command in the message) fetches them
        paths = {name: package_data.archive_path(name) for name in package_data.ARCHIVES}
    except UserError as exc:
        pytest.skip(f"package archive not fetched: {exc}")
    for name, path in paths.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == package_data.ARCHIVES[name].sha256
    label = package_data.read_members("pyradiomics", ["pyradiomics-3.0.1/data/breast1_label.nrrd"])
    breast = read_nrrd(label["pyradiomics-3.0.1/data/breast1_label.nrrd"])
    assert breast.shape == (21, 120, 45) and set(np.unique(breast).tolist()) == {0, 1}
    assert int(breast.sum()) == 143  # the lesion's voxel count (measured with an independent gzip + frombuffer)
