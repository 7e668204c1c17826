import pytest

from fints_edge.errors import FintsEdgeError
from fints_edge.layers import check_layers, cvec_row, default_layer, hf_layer_of_row, parse_sites


def test_cvec_row_is_one_below_hf_layer():
    # llama.cpp adds control-vector row k to the output of decoder layer k + 1.
    assert cvec_row(1) == 0
    assert cvec_row(22) == 21
    assert all(hf_layer_of_row(cvec_row(layer)) == layer for layer in range(1, 40))


def test_layer_zero_cannot_be_steered_by_cvec():
    with pytest.raises(FintsEdgeError, match="layer 0.*--mode exact"):
        cvec_row(0)


def test_layer_checks_and_site_parsing_shared_by_both_halves():
    assert check_layers([1, 3], 4) == [1, 3]
    for bad in ([], [3, 1], [1, 1], [-1], [4]):
        with pytest.raises(FintsEdgeError, match=r"0\.\.3"):
            check_layers(bad, 4)
    assert parse_sites("both") == ("attn", "mlp") and parse_sites("mlp") == ("mlp",)
    with pytest.raises(FintsEdgeError, match="choose one of attn, mlp, both"):
        parse_sites("ffn")


def test_default_layer_is_the_dev_sweeps_choice():
    assert default_layer(30) == 20  # SmolLM2-135M: `make eval` dev sweep (docs/eval)
    assert default_layer(32) == 21
    assert default_layer(4) == 3 and default_layer(2) == 1  # never layer 0, never past the end


def test_candidate_layers_surround_the_default_and_one_is_preferred():
    from fints_edge.layers import candidate_layers, default_layer, preferred_layer

    assert candidate_layers(30) == [18, 20, 22] and default_layer(30) == 20  # SmolLM2-135M
    assert candidate_layers(24) == [14, 16, 18] and default_layer(24) == 16  # Qwen-0.5B
    assert candidate_layers(28) == [17, 19, 20]  # Qwen-1.5B
    assert candidate_layers(2) == [1]  # never layer 0
    assert preferred_layer([18, 20, 22], 30) == 20
    assert preferred_layer([15, 25], 30) == 15  # a tie: the lower
    assert preferred_layer([1, 2], 4) == 2
    with pytest.raises(FintsEdgeError, match="no layers"):
        preferred_layer([], 30)
