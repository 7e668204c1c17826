"""The static (model2vec) encoder: hand-computed means, model2vec's own inference, bad folders."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from fints_edge.encode import MANIFEST, PROBE_SENTENCE, Encoder
from fints_edge.encode_static import EMBEDDINGS_FILE
from fints_edge.errors import FintsEdgeError

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "dog", "sat", "##s", "on", "mat", "."]
ID = {t: i for i, t in enumerate(VOCAB)}


def tiny_static_folder(
    path: Path, rows: np.ndarray, name: str = "tiny-static", **manifest: object
) -> Path:
    """A static encoder folder over a 12-token BERT-style WordPiece vocabulary; rows [12, d].

    The tokenizer has a [CLS] ... [SEP] post-processor, which static encoding must not use."""
    tok = Tokenizer(models.WordPiece(ID, unk_token="[UNK]", max_input_chars_per_word=20))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", ID["[CLS]"]), ("[SEP]", ID["[SEP]"])]
    )
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    np.save(path / EMBEDDINGS_FILE, rows)
    m = {"kind": "static", "name": name, "dim": int(rows.shape[1]), "max_length": 512}
    m |= {"pooling": "mean", "normalize": True} | manifest
    (path / MANIFEST).write_text(json.dumps(m))
    return path


def _rows(d: int = 4, seed: int = 0, dtype: type = np.float32) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(len(VOCAB), d)).astype(dtype)  # [12, d]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x)


@pytest.fixture
def rows() -> np.ndarray:
    return _rows()


def test_embedding_is_the_normalised_mean_of_the_token_rows(tmp_path, rows):
    enc = Encoder(tiny_static_folder(tmp_path / "enc", rows))
    assert (enc.kind, enc.name, enc.dim) == ("static", "tiny-static", 4)
    got = enc.encode(["The cats sat on the mat.", "dog"])
    assert got.shape == (2, 4) and got.dtype == np.float32
    ids = [ID[t] for t in ["the", "cat", "##s", "sat", "on", "the", "mat", "."]]
    np.testing.assert_allclose(got[0], _unit(rows[ids].mean(0)), atol=1e-6)
    np.testing.assert_allclose(got[1], _unit(rows[ID["dog"]]), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_float16_rows_are_averaged_in_float32(tmp_path):
    rows = _rows(dtype=np.float16)
    got = Encoder(tiny_static_folder(tmp_path / "enc", rows)).encode(["the cat sat"])[0]
    ids = [ID["the"], ID["cat"], ID["sat"]]
    np.testing.assert_allclose(got, _unit(rows[ids].astype(np.float32).mean(0)), atol=1e-6)


def test_no_special_tokens_and_unknown_tokens_are_dropped(tmp_path, rows):
    enc = Encoder(tiny_static_folder(tmp_path / "enc", rows))
    assert enc._static is not None
    assert enc._static.token_ids(["the zebra cat"]) == [[ID["the"], ID["cat"]]]
    a, b = enc.encode(["the zebra cat", "the cat"])
    np.testing.assert_allclose(a, b, atol=1e-7)


def test_a_text_of_no_known_token_gets_the_normalised_mean_row(tmp_path, rows):
    enc = Encoder(tiny_static_folder(tmp_path / "enc", rows))
    got = enc.encode(["", "zebra 🙂"])
    np.testing.assert_allclose(got, np.stack([_unit(rows.mean(0))] * 2), atol=1e-6)


def test_texts_are_cut_to_max_chars_then_max_length_tokens(tmp_path, rows):
    enc = Encoder(tiny_static_folder(tmp_path / "enc", rows, max_length=4, max_chars=11))
    # "the cat sat on" -> "the cat sat" (11 chars); "the.cat.sat" -> 5 tokens -> the . cat .
    a, c = enc.encode(["the cat sat on", "the.cat.sat"])
    np.testing.assert_allclose(a, _unit(rows[[ID["the"], ID["cat"], ID["sat"]]].mean(0)), atol=1e-6)
    c_ids = [ID["the"], ID["."], ID["cat"], ID["."]]
    np.testing.assert_allclose(c, _unit(rows[c_ids].mean(0)), atol=1e-6)


def test_batches_order_and_probe(tmp_path, rows):
    enc = Encoder(tiny_static_folder(tmp_path / "enc", rows))
    texts = ["the cat", "dog", "the mat . on", "cats", ""]
    one_by_one = np.stack([enc.encode([t])[0] for t in texts])
    np.testing.assert_allclose(enc.encode(texts, batch_size=2), one_by_one, atol=1e-7)
    np.testing.assert_allclose(enc.probe(), enc.encode([PROBE_SENTENCE])[0], atol=1e-7)
    enc.check_compatible("tiny-static", enc.probe(), "me.npz")
    with pytest.raises(FintsEdgeError, match="encoder probe disagrees"):
        enc.check_compatible("tiny-static", enc.encode(["dog"])[0], "me.npz")


def _refused(folder: Path, pattern: str) -> None:
    with pytest.raises(FintsEdgeError, match=pattern) as e:
        Encoder(folder)
    assert "\n" not in str(e.value)


def test_bad_folders_are_one_error_naming_the_file(tmp_path, rows):
    d = tiny_static_folder(tmp_path / "enc", rows)
    m = json.loads((d / MANIFEST).read_text())
    (d / MANIFEST).write_text(json.dumps(m | {"kind": "word2vec"}))
    _refused(d, r"encoder\.json: unknown encoder kind 'word2vec'")
    (d / MANIFEST).write_text(json.dumps(m | {"max_chars": -3}))
    _refused(d, r"encoder\.json: bad max_chars -3")
    (d / MANIFEST).write_text(json.dumps(m | {"dim": 5}))
    _refused(d, r"embeddings\.npy: float32 \[12, 4\], expected .*\[vocab, 5\]")
    (d / MANIFEST).write_text(json.dumps(m))
    np.save(d / EMBEDDINGS_FILE, rows[:10])
    _refused(d, r"embeddings\.npy: 10 rows but .*tokenizer\.json has 12 tokens")
    bad = rows.copy()
    bad[3, 1] = np.nan
    np.save(d / EMBEDDINGS_FILE, bad)
    _refused(d, r"embeddings\.npy: contains NaN")
    np.save(d / EMBEDDINGS_FILE, rows.astype(np.int32))
    _refused(d, r"embeddings\.npy: int32")
    (d / EMBEDDINGS_FILE).write_bytes(b"\x93NUMPY garbage")
    _refused(d, r"embeddings\.npy: corrupt")
    (d / EMBEDDINGS_FILE).unlink()
    _refused(d, r"embeddings\.npy: missing.*python -m export\.static_encoder")
    np.save(d / EMBEDDINGS_FILE, rows)
    (d / "tokenizer.json").write_text("{not json")
    _refused(d, r"tokenizer\.json: corrupt")


def test_a_manifest_without_kind_is_an_onnx_encoder(tmp_path, rows):
    d = tiny_static_folder(tmp_path / "enc", rows)
    m = json.loads((d / MANIFEST).read_text())
    del m["kind"]
    (d / MANIFEST).write_text(json.dumps(m))
    _refused(d, r"model\.onnx: missing")


def test_the_static_encoder_runs_without_torch_or_model2vec(tmp_path, rows):
    d = tiny_static_folder(tmp_path / "enc", rows)
    code = (
        "import sys\n"
        "for m in ('torch', 'transformers', 'model2vec'): sys.modules[m] = None\n"
        "from fints_edge.encode import Encoder\n"
        f"print(Encoder({str(d)!r}).encode(['the cat'])[0].tolist())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    np.testing.assert_allclose(json.loads(out.stdout), _unit(rows[[4, 5]].mean(0)), atol=1e-6)


# -- model2vec's own inference ----------------------------------------------------------------
TEXTS = [
    "The central bank raised interest rates.",
    "Ünïcödé café, naïve résumé!",
    "hello [CLS] world [SEP] [PAD]",
    "supercalifragilisticexpialidocious" * 5 + " word",  # one over-long word: [UNK], dropped
    "word " * 700,  # past max_length tokens
    "internationalization " * 150 + "dog " * 300,  # max_chars cuts before any "dog"
]


def _source_tokenizer() -> Tokenizer:
    """The real MiniLM WordPiece tokenizer, as model2vec keeps it (no post-processor)."""
    from fints_edge._paths import encoder_source_dir

    tok = Tokenizer.from_file(str(encoder_source_dir() / "tokenizer.json"))
    tok.post_processor = None
    return tok


def test_matches_model2vec_static_model_encode(tmp_path):
    """model2vec's StaticModel.encode and this runtime agree on the real WordPiece tokenizer."""
    pytest.importorskip("model2vec")
    pytest.importorskip("torch")  # export.static_encoder imports export.onnx
    from model2vec import StaticModel

    from export.static_encoder import write_folder

    tok = _source_tokenizer()
    rows = np.random.default_rng(1).normal(size=(tok.get_vocab_size(), 8)).astype(np.float32)
    model = StaticModel(vectors=rows, tokenizer=tok, normalize=True)
    # model2vec 0.9 keeps the source tokenizer's fixed padding to 128 (0.10 removes it) and
    # would average [PAD] rows; the folder is written without it, so compare against that.
    model.tokenizer.no_padding()
    model.tokenizer.no_truncation()
    enc = Encoder(write_folder(model, tmp_path / "enc", "m2v-test", "float32"))
    np.testing.assert_allclose(enc.encode(TEXTS), model.encode(TEXTS), atol=1e-6)
    # The one deliberate difference: no known token is model2vec's zero vector, here a unit one.
    assert not model.encode(["🙂"]).any() and np.linalg.norm(enc.encode(["🙂"])) == pytest.approx(1)


@pytest.mark.slow
def test_distilled_folder_matches_model2vec(tmp_path):
    """The real distillation (~30 s): the written folder embeds as the StaticModel does."""
    pytest.importorskip("model2vec")
    torch = pytest.importorskip("torch")
    from export.static_encoder import distill, write_folder

    torch.set_num_threads(1)
    model = distill(pca_dims=64)
    model.tokenizer.no_padding()
    model.tokenizer.no_truncation()
    enc = Encoder(write_folder(model, tmp_path / "enc", "m2v-64", "float16"))
    assert (enc.kind, enc.dim) == ("static", 64)
    want = model.encode(TEXTS[:3])
    cos = (enc.encode(TEXTS[:3]) * want).sum(1) / np.linalg.norm(want, axis=1)
    assert cos.min() > 0.9999  # float16 rows
    a, b, c = enc.encode(
        ["Stocks fell on Monday.", "Shares dropped at the start of the week.", "I love my dog."]
    )
    assert a @ b > a @ c


def test_the_onnx_export_never_overwrites_a_static_encoder(tmp_path, rows):
    """export.build re-exports the ONNX encoder into an invalid folder; a static one is kept."""
    from export.onnx import export_encoder

    folder = tiny_static_folder(tmp_path / "enc", rows)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert export_encoder(folder) == folder
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
