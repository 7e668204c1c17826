import json
import shutil

import numpy as np
import pytest

from fints_edge.encode import MANIFEST, PROBE_SENTENCE, Encoder
from fints_edge.errors import FintsEdgeError


@pytest.fixture(scope="module")
def encoder(onnx_encoder_dir):
    return Encoder(onnx_encoder_dir, threads=2)


def test_embeddings_are_unit_float32_of_the_manifest_dim(encoder):
    assert encoder.name == "all-MiniLM-L6-v2" and encoder.dim == 384 and encoder.max_length == 256
    x = encoder.encode(["a cat sat on the mat", "", "Stocks fell sharply on Monday."])
    assert x.shape == (3, 384) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)


def test_similar_sentences_are_closer_than_unrelated_ones(encoder):
    a, b, c = encoder.encode(
        [
            "The central bank raised interest rates.",
            "Interest rates were hiked by the Fed.",
            "My dog loves swimming in the lake.",
        ]
    )
    assert a @ b > 0.6 and a @ c < 0.2


def test_batching_and_order_do_not_change_embeddings(encoder):
    texts = [f"sentence number {i} " + "word " * (i * 7) for i in range(10)]
    one_by_one = np.stack([encoder.encode([t])[0] for t in texts])
    batched = encoder.encode(texts[::-1], batch_size=3)[::-1]
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)


def test_long_inputs_are_truncated_to_max_length(encoder):
    long = "the quick brown fox jumps over the lazy dog " * 60  # ~540 tokens
    a, b = encoder.encode([long, long + " and then something else entirely about finance"])
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_probe_check_accepts_the_same_encoder(encoder):
    encoder.check_compatible(encoder.name, encoder.encode([PROBE_SENTENCE])[0], "me.npz")


def test_probe_check_refuses_a_different_probe_name_or_size(encoder):
    other = encoder.encode(["A completely different sentence about cooking pasta."])[0]
    with pytest.raises(FintsEdgeError, match=r"me\.npz: encoder probe disagrees.*cosine"):
        encoder.check_compatible(encoder.name, other, "me.npz")
    with pytest.raises(FintsEdgeError, match=r"me\.npz: built with encoder 'e5-small'"):
        encoder.check_compatible("e5-small", encoder.probe(), "me.npz")
    with pytest.raises(FintsEdgeError, match="768 dims"):
        encoder.check_compatible(encoder.name, np.ones(768, np.float32), "me.npz")


def test_a_slightly_noisy_probe_still_passes(encoder):
    rng = np.random.default_rng(0)
    probe = encoder.probe() + rng.normal(scale=0.002, size=384).astype(np.float32)
    encoder.check_compatible(encoder.name, probe, "me.npz")


def test_missing_folder_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(FintsEdgeError, match=r"nowhere.*python -m export\.onnx"):
        Encoder(tmp_path / "nowhere")


def _copy_without_model(src, dst):
    dst.mkdir()
    shutil.copy(src / MANIFEST, dst / MANIFEST)
    shutil.copy(src / "tokenizer.json", dst / "tokenizer.json")


def test_corrupt_files_are_refused(onnx_encoder_dir, tmp_path):
    d = tmp_path / "enc"
    _copy_without_model(onnx_encoder_dir, d)
    with pytest.raises(FintsEdgeError, match=r"model\.onnx: missing.*python -m export\.onnx"):
        Encoder(d)
    (d / "model.onnx").write_bytes(b"garbage")
    with pytest.raises(FintsEdgeError, match=r"model\.onnx: corrupt"):
        Encoder(d)
    (d / "tokenizer.json").write_text("{not json")
    with pytest.raises(FintsEdgeError, match=r"tokenizer\.json: corrupt"):
        Encoder(d)
    (d / MANIFEST).write_text(json.dumps({"name": "x"}))
    with pytest.raises(FintsEdgeError, match=r"encoder\.json: corrupt"):
        Encoder(d)


def test_a_single_string_is_refused(encoder):
    with pytest.raises(FintsEdgeError, match="list of texts"):
        encoder.encode("hello")  # type: ignore[arg-type]
