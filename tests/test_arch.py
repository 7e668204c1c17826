"""The per-architecture table (fints_edge.llama.arch), the plain prompt layout for base models, and the
optional-model zoo (fints_edge.zoo). Parity per architecture: tests/export/test_arch_parity.py."""

from __future__ import annotations

import hashlib
import sys

import pytest

from fints_edge import zoo
from fints_edge.errors import FintsEdgeError
from fints_edge.llama.arch import ARCHS, cvec_note, gguf_arch_of_hf, graph_of


# -- the table ------------------------------------------------------------------------------------------
def test_injection_tensors_per_arch():
    assert graph_of("llama").inject_tensor("attn", 5) == "ffn_inp-5"
    assert graph_of("llama").inject_tensor("mlp", 5) == "l_out-5"
    assert graph_of("qwen2").inject_tensor("attn", 0) == "ffn_inp-0"
    # gemma3: after the post-attention norm (residual + normed attention), and the layer output
    assert graph_of("gemma3").inject_tensor("attn", 3) == "sa_out-3"
    assert graph_of("gemma3").inject_tensor("mlp", 3) == "l_out-3"


def test_readings_per_arch_and_the_derived_qwen2_attention_output():
    llama, qwen, gemma = graph_of("llama"), graph_of("qwen2"), graph_of("gemma3")
    assert llama.reading("attn", 4).names == ("attn_out-4",)
    assert llama.reading("attn", 4, "residual").names == ("ffn_inp-4",)
    assert llama.reading("mlp", 4).names == ("ffn_out-4",)
    # qwen2 names no attention output: residual after attention minus the residual entering
    assert qwen.reading("attn", 4).names == ("ffn_inp-4", "l_out-3")
    assert qwen.reading("attn", 0).names == ("ffn_inp-0", "embd")  # the token embeddings
    assert qwen.reading("attn", 4, "residual").names == ("ffn_inp-4",)
    assert gemma.reading("attn", 2).names == ("attn_post_norm-2",)
    assert gemma.reading("attn", 2, "residual").names == ("sa_out-2",)
    assert gemma.reading("mlp", 2).names == ("ffn_post_norm-2",)
    assert gemma.residual_in(0) == "inp_scaled"  # embeddings x sqrt(n_embd)
    assert {g.layer_output(1) for g in ARCHS.values()} == {"l_out-1"}


def test_hf_model_types_map_to_gguf_archs():
    assert gguf_arch_of_hf("llama") == "llama"
    assert gguf_arch_of_hf("mistral") == "llama"  # llama.cpp's converter makes it a llama GGUF
    assert gguf_arch_of_hf("qwen2") == "qwen2"
    assert gguf_arch_of_hf("gemma3_text") == "gemma3"
    with pytest.raises(FintsEdgeError, match="architecture 'gpt2' is not supported"):
        gguf_arch_of_hf("gpt2")


def test_unknown_arch_is_refused_in_one_line_and_cvec_states_its_approximation():
    with pytest.raises(FintsEdgeError) as e:
        graph_of("phi3", "m.gguf")
    assert "\n" not in str(e.value) and "'phi3'" in str(e.value) and "--mode cvec" in str(e.value)
    assert cvec_note("llama") is None
    note = cvec_note("phi3")
    assert note and "approximated" in note and "phi3" in note


def test_hf_modules_of_the_table_exist_in_transformers():
    """The torch twins hook these module names; a rename in transformers must fail here."""
    pytest.importorskip("transformers")
    import transformers.models.gemma3.modeling_gemma3 as g3
    import transformers.models.llama.modeling_llama as ll
    import transformers.models.mistral.modeling_mistral as mi
    import transformers.models.qwen2.modeling_qwen2 as q2

    layer_cls = {"llama": ll.LlamaDecoderLayer, "mistral": mi.MistralDecoderLayer,
                 "qwen2": q2.Qwen2DecoderLayer, "gemma3_text": g3.Gemma3DecoderLayer}  # fmt: skip
    for model_type, cls in layer_cls.items():
        g = ARCHS[gguf_arch_of_hf(model_type)]
        src = __import__("inspect").getsource(cls.__init__)
        for module in (g.hf_attn_output, g.hf_mlp_output, g.hf_attn_residual):
            assert f"self.{module} =" in src, (model_type, module)


# -- prompts for a GGUF without a chat template (base models) ----------------------------------------------
@pytest.fixture(scope="module")
def base_llm(tiny):
    """The tiny model with its chat template hidden, as a base model's GGUF has none."""
    from export.tiny import EXACT_KV
    from fints_edge.llama.inject import open_steerable

    llm, injector = open_steerable(tiny.gguf_path, "exact", n_ctx=128, n_threads=1, **EXACT_KV)
    template = llm.metadata.pop("tokenizer.chat_template")
    yield llm, injector
    llm.metadata["tokenizer.chat_template"] = template
    llm.close()


def test_plain_prompt_fallback_without_a_chat_template(base_llm):
    from fints_edge.learn.extract import DeviceExtractor
    from fints_edge.llama.model import chat_prompt, has_chat_template

    llm, injector = base_llm
    assert not has_chat_template(llm)
    msgs = [{"role": "user", "content": "Name a fruit."}]
    assert chat_prompt(llm, msgs) == "Name a fruit.\n"  # this tokenizer adds no BOS
    with pytest.raises(FintsEdgeError, match="no chat template"):
        chat_prompt(llm, msgs, "chat")
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}] + msgs
    assert chat_prompt(llm, turns) == "a\nb\n\nName a fruit.\n"
    ex = DeviceExtractor(llm, injector, [1], prompt_format="chat")
    assert ex.prompt_format == "plain"  # stated in the profile it builds
    rendered = llm.tokenize(chat_prompt(llm, msgs).encode(), add_bos=False, special=True)
    assert ex.prompt_tokens("Name a fruit.") == list(rendered)  # what the engine generates after


# -- optional models ---------------------------------------------------------------------------------------
def _fake_model(tmp_path, monkeypatch, chunks: list[bytes], sha: str | None = None) -> zoo.ZooModel:
    """A ZooModel whose chunk packages are folders on sys.path (never imported, only found)."""
    names = []
    for i, data in enumerate(chunks):
        pkg = tmp_path / "site" / f"fe_fake_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise ImportError('must not be imported')\n")
        (pkg / "data" / "chunk.bin").write_bytes(data)
        names.append((f"fe_fake_part{i}", "data/chunk.bin"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    whole = b"".join(chunks)
    model = zoo.ZooModel(
        name="fake", filename="fake.gguf", packages=("fake-part==1",), chunks=tuple(names),
        sha256=sha or hashlib.sha256(whole).hexdigest(), size=len(whole), arch="llama",
        prompt_format="chat", about="test",
    )  # fmt: skip
    monkeypatch.setitem(zoo.MODELS, "fake", model)
    monkeypatch.setenv("FINTS_EDGE_CACHE", str(tmp_path / "cache"))
    return model


def test_zoo_assembles_in_order_and_verifies(tmp_path, monkeypatch):
    model = _fake_model(tmp_path, monkeypatch, [b"GGUF" + b"a" * 1000, b"b" * 10, b"c" * 3])
    out = zoo.assemble("fake")
    assert out == zoo.models_dir() / "fake.gguf"
    assert out.read_bytes() == b"GGUF" + b"a" * 1000 + b"b" * 10 + b"c" * 3
    assert zoo.path("fake") == out
    assert not any(m.startswith("fe_fake_part") for m in sys.modules)  # found, never imported
    out.write_bytes(out.read_bytes()[:-1] + b"X")  # damaged after assembly
    with pytest.raises(FintsEdgeError, match="not the published"):
        zoo.path("fake")
    assert model.name in zoo.MODELS


def test_zoo_refuses_chunks_that_do_not_hash_right(tmp_path, monkeypatch):
    _fake_model(tmp_path, monkeypatch, [b"one", b"two"], sha="0" * 64)
    with pytest.raises(FintsEdgeError, match="refusing"):
        zoo.assemble("fake")
    assert not list(zoo.models_dir().iterdir())  # no target, no temp file left


def test_zoo_names_the_missing_package_and_the_make_target(tmp_path, monkeypatch):
    monkeypatch.setenv("FINTS_EDGE_CACHE", str(tmp_path))
    model = zoo.ZooModel(
        name="ghost", filename="g.gguf", packages=("ghost-part==1",),
        chunks=(("fe_no_such_package_x", "data/x.bin"),), sha256="0" * 64, size=1,
        arch="llama", prompt_format="chat", about="",
    )  # fmt: skip
    monkeypatch.setitem(zoo.MODELS, "ghost", model)
    with pytest.raises(FintsEdgeError, match=r"fe_no_such_package_x.*make models-extra"):
        zoo.assemble("ghost")
    with pytest.raises(FintsEdgeError, match="unknown optional model 'nope'"):
        zoo.get("nope")


def test_zoo_lists_the_models_of_the_supported_table():
    assert {m.arch for m in zoo.MODELS.values()} <= set(ARCHS)
    specs = [s for m in zoo.MODELS.values() for s in m.packages]
    assert all("==" in s for s in specs)  # pinned: the sha256 belongs to one version
    assert all(m.size > 0 and len(m.sha256) == 64 for m in zoo.MODELS.values())
