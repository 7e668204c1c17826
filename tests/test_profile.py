import os
import subprocess
import sys
import zipfile
from dataclasses import replace

import numpy as np
import pytest

from fints_edge.errors import ProfileError
from fints_edge.profile import FORMAT_VERSION, Profile
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


def test_load_refuses_pickles(tmp_path):
    path = tmp_path / "evil.npz"
    arrays = profile().to_arrays()
    arrays["inputs_utf8"] = np.array([{"x": 1}], dtype=object)
    np.savez(path, **arrays)
    with pytest.raises(ProfileError, match="evil.npz"):
        Profile.load(path)


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
    path = profile(seed=1).save(tmp_path / "me.npz")
    before = path.read_bytes()

    def boom(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError):
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


def test_user_vector_is_mean_of_signals():
    p = profile()
    np.testing.assert_allclose(p.user_vector(), p.signals.astype(np.float32).mean(0))


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
