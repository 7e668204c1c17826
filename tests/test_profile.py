import errno
import io
import os
import pickle
import subprocess
import sys
import tracemalloc
import zipfile
from dataclasses import replace

import numpy as np
import pytest

from fints_edge import profile as profile_module
from fints_edge.errors import ProfileError
from fints_edge.profile import FORMAT_VERSION, Profile, read_header
from tests._factories import identity, profile


def _assert_same(a: Profile, b: Profile) -> None:
    assert a.model == b.model
    for k, v in a.to_arrays().items():
        w = b.to_arrays()[k]
        assert v.dtype == w.dtype, k
        np.testing.assert_array_equal(v, w, err_msg=k)


def test_round_trip_is_exact(tmp_path):
    p = profile()
    path = p.save(tmp_path / "me.npz")
    _assert_same(p, Profile.load(path))


UNPICKLED: list[str] = []


def _ran_code() -> int:
    UNPICKLED.append("code from the profile ran")
    return 0


class _Payload:
    """Unpickling this calls _ran_code, as a hostile pickle would call os.system."""

    def __reduce__(self):
        return (_ran_code, ())


@pytest.mark.parametrize(
    ("field", "shape"),
    [("created", ()), ("inputs_utf8", (4,)), ("signals", (5, 2, 2, 8)), ("timestamps", (5,))],
)
def test_load_never_unpickles(tmp_path, monkeypatch, field, shape):
    """An object array of the field's own shape: a loader that unpickled it (allow_pickle=True,
    or a dtype check after the read) would run its code before any check could refuse it."""
    path = tmp_path / "evil.npz"
    arrays = profile().to_arrays()
    payload = np.empty(shape, dtype=object)
    payload[...] = _Payload()
    arrays[field] = payload
    np.savez(path, **arrays)  # numpy pickles object arrays when writing
    UNPICKLED.clear()
    monkeypatch.setattr(pickle, "load", lambda *_a, **_k: UNPICKLED.append("pickle.load"))
    monkeypatch.setattr(pickle, "loads", lambda *_a, **_k: UNPICKLED.append("pickle.loads"))
    with pytest.raises(ProfileError, match=rf"evil\.npz: field '{field}' holds Python objects"):
        Profile.load(path)
    assert UNPICKLED == []


def test_truncated_file_is_refused_with_its_name(tmp_path):
    path = profile().save(tmp_path / "me.npz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ProfileError, match=r"me\.npz: not a readable profile"):
        Profile.load(path)


def test_garbage_file_is_refused(tmp_path):
    path = tmp_path / "me.npz"
    path.write_text("hello")
    with pytest.raises(ProfileError, match="me.npz"):
        Profile.load(path)


def test_missing_file_names_the_fix(tmp_path):
    with pytest.raises(ProfileError, match="export.build"):
        Profile.load(tmp_path / "nope.npz")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("format_version", np.array(FORMAT_VERSION + 1, dtype=np.int32), "version"),
        ("format_name", np.array("something-else"), "not a fints-edge profile"),
        ("signals", np.zeros((5, 2, 2, 8), dtype=np.float32), "float16"),
        ("signals", np.zeros((5, 2, 3, 8), dtype=np.float16), "shape"),
        ("signals", np.zeros((0, 2, 2, 8), dtype=np.float16), "empty"),
        ("keys", np.ones((5, 6), dtype=np.float16), "L2-normalised"),
        ("keys", np.ones((5, 6), dtype=np.float32), "float16"),
        ("layers", np.array([3, 1], dtype=np.int32), "ascending"),
        ("layers", np.array([1, 4], dtype=np.int32), "decoder indices"),
        ("sites", np.array(["attn", "ffn"]), "sites"),
        ("inputs_offsets", np.array([0, 3], dtype=np.int64), "inputs_offsets"),
        ("outputs_utf8", np.array([255, 254], dtype=np.uint8), "outputs"),
    ],
)
def test_bad_fields_are_named(tmp_path, field, value, message):
    arrays = profile().to_arrays()
    arrays[field] = value
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ProfileError, match=message) as e:
        Profile.load(path)
    assert "bad.npz" in str(e.value)


def test_missing_field_is_named(tmp_path):
    arrays = profile().to_arrays()
    del arrays["keys"]
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ProfileError, match="'keys' is missing"):
        Profile.load(path)


def test_nan_signals_are_refused():
    p = profile()
    sig = p.signals.copy()
    sig[0, 0, 0, 0] = np.nan
    with pytest.raises(ProfileError, match="NaN"):
        replace(p, signals=sig)


def test_wrong_model_is_refused():
    p = profile()
    other = replace(identity(), n_embd=16)
    with pytest.raises(ProfileError, match="n_embd is 8 in the profile but 16"):
        p.check_model(other, "me.npz")
    p.check_model(identity())


def test_failed_write_keeps_old_profile(tmp_path, monkeypatch):
    """More faults (full disk, read-only folder, Ctrl-C, SIGINT) in tests/test_atomic.py."""
    path = profile(seed=1).save(tmp_path / "me.npz")
    before = path.read_bytes()

    def boom(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(ProfileError, match="no space left on device.*previous profile is intact"):
        profile(seed=2).save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["me.npz"]  # no temp file left behind


def test_killed_writer_keeps_old_profile(tmp_path):
    """A process killed in the middle of save leaves the previous profile loadable."""
    path = profile(n=3).save(tmp_path / "me.npz")
    before = path.read_bytes()
    code = (
        "import os, numpy as np, signal\n"
        "from tests._factories import profile\n"
        "real = np.savez\n"
        "def dying(f, **a):\n"
        "    f.write(b'partial')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "np.savez = dying\n"
        f"profile(n=9).save({str(path)!r})\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=os.getcwd())
    assert proc.returncode != 0
    assert path.read_bytes() == before
    assert Profile.load(path).n_items == 3


def test_raw_mean_signal_is_the_mean_over_items_by_hand():
    sig = np.zeros((3, 2, 2, 8), np.float16)  # [N=3, S=2, L=2, E=8]
    sig[:, 0, 0, 0] = [1.0, 2.0, 6.0]  # mean 3
    sig[:, 1, 1, 7] = [-1.0, 0.5, 0.0]  # mean -1/6
    sig[0, 0, 1, 3] = 9.0  # one item only: 9 / 3
    u = replace(profile(n=3), signals=sig).raw_mean_signal()
    assert u.shape == (2, 2, 8) and u.dtype == np.float32
    assert u[0, 0, 0] == 3.0 and u[0, 1, 3] == 3.0
    assert u[1, 1, 7] == pytest.approx(-1 / 6)
    assert np.count_nonzero(u) == 3


def test_add_and_forget_items():
    p = profile(n=4)
    q = p.with_items(p.signals[:1], p.keys[:1], ["new in"], ["new out"])
    assert q.n_items == 5 and q.inputs[-1] == "new in" and np.isnan(q.timestamps[-1])
    r = q.without_item(0)
    assert r.n_items == 4 and r.inputs[0] == "input 1 é"
    with pytest.raises(ProfileError, match="valid ids"):
        r.without_item(7)


def test_npz_suffix_required(tmp_path):
    with pytest.raises(ProfileError, match=".npz"):
        profile().save(tmp_path / "me.bin")


def test_texts_are_stored_as_compact_utf8(tmp_path):
    p = profile()
    arrays = p.to_arrays()
    assert arrays["inputs_utf8"].nbytes == sum(len(t.encode()) for t in p.inputs.tolist())
    assert Profile.load(p.save(tmp_path / "me.npz")).inputs.tolist() == p.inputs.tolist()


def test_zip_members_are_plain_arrays(tmp_path):
    path = profile().save(tmp_path / "me.npz")
    with zipfile.ZipFile(path) as z:
        assert all(n.endswith(".npy") for n in z.namelist())


def test_version_1_files_still_load_without_opening(tmp_path):
    p = profile(n=3)
    arrays = p.to_arrays()
    arrays["format_version"] = np.array(1, dtype=np.int32)
    path = tmp_path / "v1.npz"
    np.savez(path, **arrays)
    old = Profile.load(path)
    assert old.opening is None and old.opening_tokens == 0
    np.testing.assert_array_equal(old.signals, p.signals)


def test_opening_signals_round_trip_and_follow_item_edits(tmp_path):
    base = profile(n=3)
    p = replace(base, opening=(base.signals * 2).astype(np.float16), opening_tokens=3)
    back = Profile.load(p.save(tmp_path / "me.npz"))
    np.testing.assert_array_equal(back.opening, p.opening)
    assert back.opening_tokens == 3
    assert back.without_item(1).opening.shape[0] == 2
    np.testing.assert_array_equal(back.take([2]).opening[0], p.opening[2])
    with pytest.raises(ProfileError, match="opening signals"):
        back.with_items(back.signals[:1], back.keys[:1], ["x"], ["y"])
    grown = back.with_items(back.signals[:1], back.keys[:1], ["x"], ["y"], opening=back.opening[:1])
    assert grown.opening.shape[0] == 4
    with pytest.raises(ProfileError, match="opening"):
        replace(base, opening=base.signals[:2], opening_tokens=3)


# -- loading files nobody vouches for (random ones: tests/test_fuzz.py) -----------------------------
def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _npy_header(shape: tuple[int, ...], dtype: str, data: bytes = b"") -> bytes:
    """A .npy member whose header claims ``shape`` whatever the data that follows."""
    buf = io.BytesIO()
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + data


def _zip(path, members: dict[str, bytes], method: int = zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", method) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def _members(p=None) -> dict[str, bytes]:
    return {f"{k}.npy": _npy(v) for k, v in (p or profile()).to_arrays().items()}


def _declare_size(data: bytes, name: str, size: int) -> bytes:
    """Patch ``name``'s sizes in the central directory (compressed and not: a stored member that
    claims ``size`` bytes), as a hostile file would."""
    at = 0
    while True:
        at = data.index(b"PK\x01\x02", at)
        n = int.from_bytes(data[at + 28 : at + 30], "little")
        if data[at + 46 : at + 46 + n] == name.encode():
            sizes = size.to_bytes(4, "little") * 2  # compressed, uncompressed
            return data[: at + 20] + sizes + data[at + 28 :]
        at += 4


def _no_decompression(monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("a member was opened")

    monkeypatch.setattr(zipfile.ZipFile, "open", refuse)


@pytest.mark.parametrize("read", [Profile.load, read_header])
def test_declared_sizes_over_the_limit_are_refused_before_any_member_is_read(
    tmp_path, monkeypatch, read
):
    data = _zip(tmp_path / "bomb.npz", _members()).read_bytes()
    for name in ("signals.npy", "keys.npy"):  # 2 x 3 GiB > MAX_PROFILE_BYTES
        data = _declare_size(data, name, 3 << 30)
    (tmp_path / "bomb.npz").write_bytes(data)
    _no_decompression(monkeypatch)
    with pytest.raises(ProfileError, match=r"limited to 4,294,967,296 bytes \(MAX_PROFILE_BYTES\)"):
        read(tmp_path / "bomb.npz")


@pytest.mark.parametrize("read", [Profile.load, read_header])
def test_a_zip_bomb_under_the_limit_is_refused_by_its_inflation(tmp_path, monkeypatch, read):
    members = _members()
    zeros = np.zeros(40 << 20, np.uint8)  # 40 MB of zeros deflate to ~40 KB
    members["inputs_utf8.npy"] = _npy(zeros)
    path = _zip(tmp_path / "bomb.npz", members, zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 1 << 20
    _no_decompression(monkeypatch)
    with pytest.raises(ProfileError, match=r"'inputs_utf8.npy' would inflate .* zip bomb"):
        read(path)


def test_a_huge_shape_in_a_header_is_refused_before_allocating(tmp_path):
    members = _members()
    members["signals.npy"] = _npy_header((10**12, 2, 2, 8), "<f2", b"\0" * 64)
    path = _zip(tmp_path / "huge.npz", members)
    tracemalloc.start()
    try:
        with pytest.raises(
            ProfileError, match=r"field 'signals' header says float16 \(10+, 2, 2, 8\)"
        ):
            Profile.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20  # bytes: nothing near the 32 TB the header asks for


@pytest.mark.parametrize(
    ("name", "member", "message"),
    [
        ("evil.npy", b"x", r"unexpected member 'evil\.npy'"),
        ("keys", b"x", r"unexpected member 'keys'"),
        ("signals.npy", _npy_header((5, 2, 2, 8), "|O"), r"'signals' holds Python objects"),
        ("keys.npy", _npy(np.ones((5, 6, 1), np.float16)), r"'keys' must be float16 \[N, D\]"),
        ("created.npy", _npy(np.array("x" * 20000)), r"'created' is <U20000 \(\), far larger"),
        ("layers.npy", _npy(np.array([1.0, 3.0])), r"'layers' must be a 1-D array of integers"),
        ("timestamps.npy", _npy(np.zeros(4)), r"'timestamps' has shape \(4,\), expected \(5,\)"),
        ("encoder_probe.npy", _npy(np.zeros(6, np.float64)), r"'encoder_probe' must be float32"),
        ("signals.npy", _npy_header((5, 2, 2, 8), "<f2", b"\0" * 10), r"but the member holds 10"),
        ("sites.npy", _npy_header((-2,), "<U4"), r"'sites' has a negative dimension"),
    ],
)
def test_members_are_checked_before_their_data(tmp_path, name, member, message):
    members = _members()
    members[name] = member
    with pytest.raises(ProfileError, match=message) as e:
        Profile.load(_zip(tmp_path / "bad.npz", members))
    assert str(e.value).startswith(str(tmp_path / "bad.npz"))
    assert "python -m export.build" in str(e.value)


def test_a_repeated_member_is_refused(tmp_path):
    members = _members()
    path = _zip(tmp_path / "twice.npz", members)
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(path, "a") as z:
        z.writestr("keys.npy", members["keys.npy"])
    with pytest.raises(ProfileError, match="'keys.npy' appears twice"):
        Profile.load(path)


@pytest.mark.parametrize(
    ("field", "index", "value"),
    [
        ("residual_norms", 1, np.nan),
        ("residual_norms", 0, -1.0),
        ("encoder_probe", 2, np.inf),
        ("keys", (0, 0), np.nan),
        ("timestamps", 3, -np.inf),
    ],
)
def test_non_finite_numbers_are_refused(tmp_path, field, index, value):
    arrays = profile().to_arrays()
    arrays[field] = arrays[field].copy()
    arrays[field][index] = value
    np.savez(tmp_path / "nan.npz", **arrays)
    with pytest.raises(ProfileError, match=rf"nan\.npz: field '{field}' (contains|must be finite)"):
        Profile.load(tmp_path / "nan.npz")


def test_fortran_order_compressed_and_v1_files_still_load(tmp_path):
    p = profile()
    arrays = p.to_arrays()
    arrays["signals"] = np.asfortranarray(arrays["signals"])
    np.savez_compressed(tmp_path / "f.npz", **arrays)
    back = Profile.load(tmp_path / "f.npz")
    _assert_same(p, back)
    assert back.signals.flags.c_contiguous


def test_a_folder_is_not_a_profile(tmp_path):
    with pytest.raises(ProfileError, match="is a folder; pass the profile file"):
        Profile.load(tmp_path)


# -- why a file cannot be read: permissions, damage, or (never relabelled) a bug --------------------
def test_an_unreadable_file_says_permission_denied_not_rebuild(tmp_path, monkeypatch):
    """As root chmod would not stop the read, so the refusal of the OS is simulated."""
    path = profile().save(tmp_path / "me.npz")
    real_open = io.open

    def refuse(file, *a, **k):
        if os.fspath(file) == str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *a, **k)

    monkeypatch.setattr(io, "open", refuse)  # what Path.open and zipfile both call
    for read in (Profile.load, read_header):
        with pytest.raises(ProfileError) as e:
            read(path)
        msg = str(e.value)
        assert msg.startswith(f"{path}: cannot be read (permission denied)"), msg
        assert "chmod u+r" in msg and "rebuild" not in msg and "\n" not in msg


@pytest.mark.parametrize("bug", [KeyError, ValueError, RuntimeError, TypeError])
def test_a_reader_bug_is_not_relabelled_as_a_damaged_file(tmp_path, monkeypatch, bug):
    path = profile().save(tmp_path / "me.npz")

    def broken(*_a, **_k):
        raise bug("a bug in the reader")

    monkeypatch.setattr(profile_module, "_small_rule", broken)
    for read in (Profile.load, read_header):
        with pytest.raises(bug, match="a bug in the reader") as e:
            read(path)
        assert not isinstance(e.value, ProfileError)


def test_a_damaged_npy_header_is_named(tmp_path):
    members = _members()
    members["keys.npy"] = b"\x93NUMPY\x01\x00\x10\x00{'descr': <f2'}   \n" + b"\0" * 16
    with pytest.raises(ProfileError, match=r"bad\.npz: field 'keys' has a damaged \.npy header"):
        Profile.load(_zip(tmp_path / "bad.npz", members))


def test_an_encrypted_member_is_a_damaged_file(tmp_path):
    path = profile().save(tmp_path / "me.npz")
    data = bytearray(path.read_bytes())
    central = data.index(b"PK\x01\x02")  # the first central directory record
    data[central + 8] |= 0x1  # its general-purpose flags: "encrypted"
    path.write_bytes(bytes(data))
    with pytest.raises(ProfileError, match=r"me\.npz: member '.*' is encrypted .*export\.build"):
        Profile.load(path)


def test_read_header_gives_the_facts_of_load_without_reading_the_signals(tmp_path):
    p = profile(n=5)
    arrays = p.to_arrays()
    arrays["signals"] = np.full_like(arrays["signals"], np.nan)  # refused by a full load only
    np.savez(tmp_path / "me.npz", **arrays)
    with pytest.raises(ProfileError, match="'signals' contains NaN"):
        Profile.load(tmp_path / "me.npz")
    h = read_header(tmp_path / "me.npz")
    assert (h.n_items, h.layers, h.sites, h.created) == (
        5,
        tuple(p.layers.tolist()),
        p.sites,
        p.created,
    )
    assert h.model == p.model and h.format_version == FORMAT_VERSION
    assert h.has_opening == (p.opening is not None)
