import json
import os

import numpy as np
import pytest
import torch

from export import onnx as onnx_export
from export.onnx import AggregatorModule, export_aggregator, export_encoder, main
from fints_edge._paths import encoder_source_dir
from fints_edge.aggregate import AGGREGATOR_INPUTS, AggregateParams, OnnxAggregator, numpy_aggregate
from fints_edge.encode import Encoder
from fints_edge.errors import FintsEdgeError

SENTENCES = [
    "The central bank raised interest rates by a quarter point.",
    "hi",
    "A new species of frog was discovered in the Amazon rainforest, scientists said on Tuesday, "
    "after a three-year survey of remote river valleys.",
    "Ünïcödé, emoji 🚀 and numbers 3.14159 in one line!",
]


@pytest.fixture(scope="module")
def torch_embeddings():
    """sentence-transformers' recipe with plain transformers: mean over the mask, then L2."""
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(2)
    src = encoder_source_dir()
    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModel.from_pretrained(src).eval()
    batch = tok(SENTENCES, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state  # [b, t, d]
    mask = batch["attention_mask"][:, :, None].float()
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()


def test_encoder_onnx_matches_torch_pooling_parity(onnx_encoder_dir, torch_embeddings):
    got = Encoder(onnx_encoder_dir).encode(SENTENCES)
    cos = (got * torch_embeddings).sum(axis=1)
    assert cos.min() > 0.9999
    np.testing.assert_allclose(got, torch_embeddings, atol=1e-4)


def test_padding_in_a_batch_does_not_change_embeddings_parity(onnx_encoder_dir):
    enc = Encoder(onnx_encoder_dir)
    alone = np.stack([enc.encode([s])[0] for s in SENTENCES])
    np.testing.assert_allclose(enc.encode(SENTENCES, batch_size=len(SENTENCES)), alone, atol=1e-5)


def test_encoder_folder_holds_three_files_and_a_manifest(onnx_encoder_dir):
    assert sorted(p.name for p in onnx_encoder_dir.iterdir()) == [
        "encoder.json",
        "model.onnx",
        "tokenizer.json",
    ]
    m = json.loads((onnx_encoder_dir / "encoder.json").read_text())
    assert m["name"] == "all-MiniLM-L6-v2" and m["dim"] == 384 and m["max_length"] == 256
    assert m["pooling"] == "mean" and m["normalize"] is True
    assert m["model_bytes"] == (onnx_encoder_dir / "model.onnx").stat().st_size
    leftovers = [p.name for p in onnx_encoder_dir.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_valid_encoder_is_not_exported_again(onnx_encoder_dir, monkeypatch):
    import optimum.exporters.onnx

    def boom(*_args, **_kwargs):
        raise AssertionError("should not export")

    monkeypatch.setattr(optimum.exporters.onnx, "main_export", boom)
    before = (onnx_encoder_dir / "model.onnx").stat().st_mtime_ns
    assert export_encoder(onnx_encoder_dir) == onnx_encoder_dir
    assert (onnx_encoder_dir / "model.onnx").stat().st_mtime_ns == before


def test_a_crash_during_export_leaves_no_half_folder(tmp_path, monkeypatch):
    import optimum.exporters.onnx

    def crash(_model, output, **_kwargs):
        (output / "model.onnx").write_bytes(b"half")
        raise RuntimeError("killed")

    monkeypatch.setattr(optimum.exporters.onnx, "main_export", crash)
    with pytest.raises(RuntimeError, match="killed"):
        export_encoder(tmp_path / "encoder")
    assert list(tmp_path.iterdir()) == []


def test_a_crash_during_re_export_keeps_the_old_encoder(onnx_encoder_dir, tmp_path, monkeypatch):
    import shutil

    import optimum.exporters.onnx

    old = tmp_path / "encoder"
    shutil.copytree(onnx_encoder_dir, old)
    monkeypatch.setattr(
        optimum.exporters.onnx,
        "main_export",
        lambda *_a, **_k: (_ for _ in ()).throw(RuntimeError("killed")),
    )
    with pytest.raises(RuntimeError):
        export_encoder(old, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder"]
    Encoder(old)  # still loads


# -- aggregator -------------------------------------------------------------------------------------
def test_aggregator_graph_has_dynamic_axes_and_a_version(onnx_aggregator_path):
    import onnx

    model = onnx.load(str(onnx_aggregator_path))
    inputs = {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in model.graph.input
    }
    assert list(inputs) == list(AGGREGATOR_INPUTS)
    assert inputs["signals"] == ["K", "S", "L", "E"] and inputs["similarities"] == ["K"]
    assert inputs["temperature"] == [] and inputs["item_weights"] == ["K"]
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert {p.key: p.value for p in model.metadata_props}["fints_edge.aggregator_version"] == "1"


def test_torch_module_matches_numpy_parity():
    rng = np.random.default_rng(0)
    sims = rng.uniform(0, 1, 4).astype(np.float32)
    sig = rng.normal(size=(4, 2, 3, 5)).astype(np.float32)
    params = AggregateParams(
        temperature=0.1,
        strength=2.0,
        sim_floor=0.2,
        sim_full=1.5,
        item_weights=np.array([1, 2, 3, 4.0]),
    )
    ref = numpy_aggregate(sims, sig, params)
    feeds = {
        k: torch.from_numpy(np.asarray(v, np.float32))
        for k, v in zip(
            AGGREGATOR_INPUTS,
            (
                sims,
                sig,
                params.temperature,
                params.strength,
                params.sim_floor,
                params.sim_full,
                params.item_weights,
            ),
            strict=True,
        )
    }
    vectors, weights, gate = AggregatorModule()(**feeds)
    np.testing.assert_allclose(vectors.numpy(), ref.vectors, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(weights.numpy(), ref.weights, rtol=1e-5)
    assert float(gate) == pytest.approx(ref.gate, abs=1e-6) and 0 < ref.gate < 1


def test_aggregator_export_skips_valid_and_replaces_stale_files(tmp_path):
    path = export_aggregator(tmp_path / "agg.onnx")
    stamp = path.stat().st_mtime_ns
    assert export_aggregator(path).stat().st_mtime_ns == stamp
    path.write_bytes(b"stale")
    with pytest.raises(FintsEdgeError):
        OnnxAggregator(path)
    export_aggregator(path)
    OnnxAggregator(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agg.onnx"]
    assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_cli_exports_both(onnx_encoder_dir, tmp_path, capsys):
    agg = tmp_path / "a" / "aggregator.onnx"
    assert main(["--encoder-dir", str(onnx_encoder_dir), "--aggregator", str(agg)]) == 0
    assert agg.is_file()
    out = capsys.readouterr().out
    assert str(onnx_encoder_dir) in out and str(agg) in out


def test_cli_prints_one_line_errors(tmp_path, monkeypatch, capsys):
    def refuse(*_args, **_kwargs):
        raise FintsEdgeError("x: broken; fix it")

    monkeypatch.setattr(onnx_export, "export_encoder", refuse)
    assert main(["--encoder-dir", str(tmp_path / "e")]) == 1
    assert capsys.readouterr().err.strip() == "error: x: broken; fix it"
    assert not os.path.exists(tmp_path / "e")
