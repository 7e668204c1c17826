"""Re-keying a profile for another encoder: new keys, name and probe together, or nothing."""

from dataclasses import replace

import numpy as np
import pytest

from fints_edge.encode import Encoder
from fints_edge.errors import FintsEdgeError
from fints_edge.profile import Profile, normalised_keys
from fints_edge.reindex import main, reindex
from tests._factories import profile
from tests.test_encode_static import tiny_static_folder

INPUTS = ["the cat sat", "the dog sat on the mat", "cats", "dog . dog", "the mat"]


@pytest.fixture
def encoders(tmp_path):
    """Two static encoders of different widths and names over the same tiny vocabulary."""
    rng = np.random.default_rng(7)
    a = tiny_static_folder(tmp_path / "a", rng.normal(size=(12, 4)).astype(np.float32), "enc-a")
    b = tiny_static_folder(tmp_path / "b", rng.normal(size=(12, 8)).astype(np.float32), "enc-b")
    return Encoder(a), Encoder(b)


@pytest.fixture
def keyed_with_a(tmp_path, encoders):
    """A profile on disk whose keys came from encoder a."""
    p = reindex(replace(profile(n=5), inputs=np.array(INPUTS)), encoders[0])
    return p.save(tmp_path / "me.npz")


def test_reindex_replaces_keys_name_and_probe_and_nothing_else(keyed_with_a, encoders):
    old = Profile.load(keyed_with_a)
    new = reindex(old, encoders[1])
    want = normalised_keys(encoders[1].encode(INPUTS))  # float16 [5, 8]
    assert new.keys.dtype == np.float16 and new.keys.shape == (5, 8)
    np.testing.assert_array_equal(new.keys, want)
    assert new.encoder_name == "enc-b"
    np.testing.assert_array_equal(new.encoder_probe, encoders[1].probe())
    for field in ("signals", "inputs", "outputs", "timestamps", "layers", "residual_norms"):
        np.testing.assert_array_equal(getattr(new, field), getattr(old, field))


def test_cli_rekeys_so_the_new_encoder_passes_and_the_old_is_refused(
    keyed_with_a, encoders, capsys
):
    a, b = encoders
    assert main(["--profile", str(keyed_with_a), "--encoder", str(b.path)]) == 0
    assert "5 keys re-embedded with 'enc-b'" in capsys.readouterr().out
    got = Profile.load(keyed_with_a)
    np.testing.assert_array_equal(got.keys, normalised_keys(b.encode(INPUTS)))
    b.check_compatible(got.encoder_name, got.encoder_probe, str(keyed_with_a))
    with pytest.raises(FintsEdgeError, match="built with encoder 'enc-b'"):
        a.check_compatible(got.encoder_name, got.encoder_probe, str(keyed_with_a))
    # queries from b now retrieve by b's similarities: the top item for an input is itself
    sims = b.encode(INPUTS) @ got.keys.astype(np.float32).T  # [5, 5]
    assert (sims.argmax(1) == np.arange(5)).all()


def test_out_writes_elsewhere_and_keeps_the_original(keyed_with_a, encoders, tmp_path):
    before = keyed_with_a.read_bytes()
    out = tmp_path / "me-b.npz"
    assert (
        main(
            ["--profile", str(keyed_with_a), "--encoder", str(encoders[1].path), "--out", str(out)]
        )
        == 0
    )
    assert keyed_with_a.read_bytes() == before
    assert Profile.load(out).encoder_name == "enc-b"


def test_onnx_keys_are_rekeyed_for_a_static_encoder(onnx_encoder_dir, encoders, tmp_path):
    onnx = Encoder(onnx_encoder_dir, threads=1)
    path = reindex(replace(profile(n=5), inputs=np.array(INPUTS)), onnx).save(tmp_path / "o.npz")
    assert main(["--profile", str(path), "--encoder", str(encoders[0].path)]) == 0
    got = Profile.load(path)
    assert got.keys.shape == (5, 4)
    encoders[0].check_compatible(got.encoder_name, got.encoder_probe, str(path))
    with pytest.raises(FintsEdgeError, match="built with encoder 'enc-a'"):
        onnx.check_compatible(got.encoder_name, got.encoder_probe, str(path))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--profile", "{tmp}/nowhere.npz", "--encoder", "{b}"], "nowhere.npz: no such profile"),
        (
            ["--profile", "{me}", "--encoder", "{tmp}/no-encoder"],
            "no-encoder/encoder.json: encoder not found",
        ),
        (
            ["--profile", "{me}", "--encoder", "{b}", "--out", "{tmp}/x.txt"],
            "x.txt: a profile file name must end in .npz",
        ),
        (["--profile", "{tmp}", "--encoder", "{b}"], "is a folder"),
    ],
)
def test_bad_paths_are_one_error_line_and_exit_1(
    keyed_with_a, encoders, tmp_path, capsys, args, message
):
    before = keyed_with_a.read_bytes()
    paths = {"tmp": tmp_path, "me": keyed_with_a, "b": encoders[1].path}
    assert main([a.format(**paths) for a in args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert keyed_with_a.read_bytes() == before
