"""export.build end to end on the tiny model: the profile on disk and the refusals."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from export.build import BuildOptions, build_profile, main
from fints_edge.encode import Encoder
from fints_edge.errors import FintsEdgeError
from fints_edge.profile import Profile

HISTORY = [
    {
        "input": "Headline: the city opens a bridge.",
        "output": "bridge opens!",
        "rejected": "City Opens Bridge",
    },
    {
        "input": "Headline: rain expected all week.",
        "output": "rain all week!",
        "rejected": "Week Of Rain Ahead",
    },
    {
        "input": "Headline: the library extends hours.",
        "output": "library open late!",
        "rejected": "Library Hours Extended",
        "timestamp": 1700000000,
    },
]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_build_writes_a_model_bound_profile(tiny, tmp_path, onnx_encoder_dir):
    from export.models import identity_from_hf, load_hf

    hist = _write(tmp_path / "h.jsonl", HISTORY)
    opts = BuildOptions(
        layers=(1, 2), negatives="given", encoder_dir=onnx_encoder_dir, progress=False
    )
    built = build_profile(tiny.hf_dir, hist, tmp_path / "me.npz", opts)
    p = Profile.load(tmp_path / "me.npz")
    # the default sites: the attention site alone (the dev sweep's choice, layers.DEFAULT_SITES)
    assert p.n_items == 3 and p.layers.tolist() == [1, 2] and p.sites == ("attn",)
    assert p.signals.shape == (3, 1, 2, tiny.n_embd) and p.signals.dtype == np.float16
    np.testing.assert_array_equal(p.signals, built.signals)
    model, tok = load_hf(tiny.hf_dir)
    assert p.model == identity_from_hf(model, tok)
    enc = Encoder(onnx_encoder_dir)
    np.testing.assert_allclose(p.keys, enc.encode([h["input"] for h in HISTORY]), atol=1e-3)
    assert p.outputs.tolist() == [h["output"] for h in HISTORY]
    assert np.isnan(p.timestamps[0]) and p.timestamps[2] == 1700000000
    assert p.residual_norms.shape == (2,) and (p.residual_norms > 0).all()
    # opening signals are stored by default, the same shape as the signals
    assert p.opening is not None and p.opening.shape == p.signals.shape and p.opening_tokens == 3
    assert np.abs(p.opening.astype(np.float32) - p.signals.astype(np.float32)).max() > 0


def test_zero_shot_negatives_come_from_the_model(tiny, tmp_path, onnx_encoder_dir):
    rows = [{"input": h["input"], "output": h["output"]} for h in HISTORY[:2]]
    hist = _write(tmp_path / "h.jsonl", rows)
    opts = BuildOptions(
        layers=(2,),
        encoder_dir=onnx_encoder_dir,
        max_new_tokens=6,
        progress=False,
        rouge_threshold=1.01,
    )
    p = build_profile(tiny.hf_dir, hist, tmp_path / "me.npz", opts)
    assert p.n_items == 2 and np.abs(p.signals.astype(np.float32)).max() > 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "history is empty"),
        ('{"input": "a", "output": "b"}\n{"input": "a", "outp\n', r"h\.jsonl:2: not valid JSON"),
        ('{"input": "a", "output": "b"}\n', "no 'rejected' text"),
    ],
)
def test_cli_refuses_bad_history_in_one_line(tiny, tmp_path, capsys, content, message):
    (tmp_path / "h.jsonl").write_text(content)
    out = tmp_path / "me.npz"
    code = main(
        [
            "--model",
            str(tiny.hf_dir),
            "--history",
            str(tmp_path / "h.jsonl"),
            "--out",
            str(out),
            "--negatives",
            "given",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("error: ")
    assert re.search(message, err[0])
    assert not out.exists()


def test_out_of_range_layer_is_refused(tiny, tmp_path, onnx_encoder_dir):
    hist = _write(tmp_path / "h.jsonl", HISTORY)
    opts = BuildOptions(
        layers=(9,), negatives="given", encoder_dir=onnx_encoder_dir, progress=False
    )
    with pytest.raises(FintsEdgeError, match=r"layers \[9\].*indices in 0\.\.3"):
        build_profile(tiny.hf_dir, hist, tmp_path / "me.npz", opts)
