"""README.md's measured figures and bench/README.md are what the committed results files give.

A hand edit of a number, or results files re-run without `make figures`, fail here. The other
tests pin what the renderer says about the files: both ratios of time to first token, the
machine (or that none was recorded), no absolute path, no torch, and no import cycle in bench/.
"""

from __future__ import annotations

import ast
import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import figures
from bench.render import render_readme
from evals.machine import cpu_model, machine_info

ROOT = Path(__file__).resolve().parent.parent


def _committed() -> tuple[dict, dict]:
    return (
        json.loads((ROOT / figures.BENCH).read_text(encoding="utf-8")),
        json.loads((ROOT / figures.EVAL).read_text(encoding="utf-8")),
    )


def _copy_repo(tmp_path: Path) -> Path:
    for rel in (figures.README, figures.BENCH, figures.EVAL):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / rel, tmp_path / rel)
    return tmp_path


def test_readme_figures_are_rendered_from_the_committed_results():
    text = (ROOT / figures.README).read_text(encoding="utf-8")
    assert figures.section(text) == figures.rendered(ROOT), (
        "README.md's measured figures differ from bench/results.json and docs/eval/results.json: "
        "run `make figures` (and do not edit between the markers by hand)"
    )


def test_bench_readme_is_rendered_from_the_committed_results():
    bench, _ = _committed()
    assert (ROOT / "bench" / "README.md").read_text(encoding="utf-8") == render_readme(bench)


def _first_decimal(body: str) -> tuple[str, str]:
    """The first decimal figure of the section and that figure one digit up."""
    m = re.search(r"\b(\d+)\.(\d+)\b", body)
    assert m is not None
    return m.group(0), f"{m.group(1)}.{m.group(2)[:-1]}{(int(m.group(2)[-1]) + 1) % 10}"


def _ttft_ratio(_body: str) -> tuple[str, str]:
    """The first-token ratio's cell, 0.001 up (the kind of hand "correction" this prevents)."""
    ratio = json.loads((ROOT / figures.BENCH).read_text(encoding="utf-8"))["ttft"]["ratio"]
    return f"| {ratio:.3f} |", f"| {ratio + 0.001:.3f} |"


@pytest.mark.parametrize("edit", [_first_decimal, _ttft_ratio])
def test_an_edited_number_fails_the_check(tmp_path, capsys, edit):
    root = _copy_repo(tmp_path)
    readme = root / figures.README
    assert figures.main(["--check", "--root", str(root)]) == 0
    text = readme.read_text(encoding="utf-8")
    body = figures.section(text)
    old, new = edit(body)
    assert old in body and old != new
    readme.write_text(text.replace(body, body.replace(old, new, 1)), encoding="utf-8")
    assert figures.section(readme.read_text(encoding="utf-8")) != figures.rendered(root)
    assert figures.main(["--check", "--root", str(root)]) == 1
    assert "run `make figures`" in capsys.readouterr().err
    # Rendering repairs it.
    assert figures.main(["--root", str(root)]) == 0
    assert figures.main(["--check", "--root", str(root)]) == 0


def test_a_rerun_without_make_figures_fails_the_check(tmp_path):
    root = _copy_repo(tmp_path)
    path = root / figures.BENCH
    r = json.loads(path.read_text(encoding="utf-8"))
    r["ttft"]["steered_ms"] += 10.0
    path.write_text(json.dumps(r, indent=2) + "\n", encoding="utf-8")
    assert figures.main(["--check", "--root", str(root)]) == 1


def test_missing_markers_are_an_error_not_a_silent_rewrite(tmp_path):
    root = _copy_repo(tmp_path)
    readme = root / figures.README
    readme.write_text(readme.read_text(encoding="utf-8").replace(figures.END, ""))
    before = readme.read_text(encoding="utf-8")
    assert figures.main(["--root", str(root)]) == 2
    assert readme.read_text(encoding="utf-8") == before


def _bench_fixture() -> dict:
    """The committed bench results with round, hand-checkable first-token figures."""
    bench, _ = _committed()
    r = copy.deepcopy(bench)
    r["ttft"] = {"steered_ms": 110.0, "unsteered_ms": 100.0, "plan_ms": 4.0, "ratio": 1.02,
                 "prompts": 6, "pairs": 18}  # fmt: skip
    return r


def test_first_token_ratio_is_shown_as_both_kinds_of_ratio():
    text = "\n".join(figures.render_bench(_bench_fixture()))
    assert (
        "| time to first token, steered / unsteered: median of the paired ratios | 1.020 |" in text
    )
    assert "ratio of the medians | 1.100 (110.0 / 100.0 ms) |" in text
    assert "the 18 pairs (6 prompts" in text
    old = _bench_fixture()
    del old["ttft"]["pairs"], old["ttft"]["prompts"]
    assert "how many is not recorded" in "\n".join(figures.render_bench(old))


def test_machine_is_named_or_said_to_be_unrecorded():
    bench, evals = _committed()
    evals = copy.deepcopy(evals)
    older = list(evals["models"].values())[-1]  # as a run from before machines were recorded
    older.pop("machine", None)
    older.pop("llama_build", None)
    old = {k: v for k, v in bench.items() if k not in ("machine", "rss_profile_items")}
    text = figures.render(old, evals)
    assert "Machine: CPU not recorded in `bench/results.json`" in text
    assert "Machine: CPU not recorded in `docs/eval/results.json`" in text
    assert "| chat peak RSS, the bench's grown profile" in text
    new = old | {
        "machine": {"cpu": "Example CPU 9000", "logical_cpus": 8, "usable_cpus": 2,
                    "arch": "x86_64", "system": "Linux", "llama_build_key": "x86_64-0123abcd",
                    "threads": {"ttft": 1, "chat_peak_rss_mb": 1, "build_items_per_s_torch": 2}},
        "rss_profile_items": 1000,
    }  # fmt: skip
    text = "\n".join(figures.render_bench(new))
    assert (
        "Machine: Example CPU 9000, 8 logical CPUs (2 usable), Linux x86_64, llama.cpp build "
        "`x86_64-0123abcd`; threads per row." in text
    )
    assert (
        f"| chat peak RSS, a 1,000-item profile | {bench['chat_peak_rss_mb']:.0f} MB | 1 |" in text
    )
    device, torch_ = bench["build_items_per_s_device"], bench["build_items_per_s_torch"]
    assert f"| {device:.2f} / {torch_:.2f} items/s | 2 / 2 |" in text
    evals = copy.deepcopy(evals)
    first = next(iter(evals["models"].values()))
    first["machine"] = {"cpu": "Example CPU 9000", "logical_cpus": 2, "threads": {"answers": 2}}
    text = "\n".join(figures.render_eval(evals))
    assert "Machine: Example CPU 9000, 2 logical CPUs; threads: answers 2." in text
    assert "Machine: CPU not recorded in `docs/eval/results.json`; threads not recorded." in text
    # an evaluation run names its machine, else at least the llama.cpp build it recorded
    first["machine"] = None
    first["runs"] = {
        "commits": {
            "command": "python -m evals --skip personas",
            "seconds": 60.0,
            "llama_build": "llama.cpp build (...): GGML_AVX2; key x86-0a1b",
        }
    }
    first["llama_build"] = "llama.cpp build (...): GGML_AVX2; key x86-2c3d"
    first["benchmarks"]["commits"] = next(
        m["benchmarks"]["commits"] for m in evals["models"].values() if "commits" in m["benchmarks"]
    )
    text = "\n".join(figures.render_eval(evals))
    assert (
        "Machine: CPU not recorded in `docs/eval/results.json`, llama.cpp build `x86-2c3d`" in text
    )
    assert (
        "1 min; machine: CPU not recorded in `docs/eval/results.json`, llama.cpp build `x86-0a1b`)"
        in text
    )
    first["runs"]["commits"]["machine"] = {"cpu": "Example CPU 9000", "logical_cpus": 2}
    text = "\n".join(figures.render_eval(evals))
    assert "1 min; machine: Example CPU 9000, 2 logical CPUs)" in text
    # bench/README.md names it too, and only when recorded (older files render as before)
    assert "Machine: Example CPU 9000" in render_readme(new)
    assert "Machine:" not in render_readme(old)


def test_rendered_text_has_no_absolute_path():
    text = figures.rendered(ROOT)
    assert str(ROOT) not in text and "~/" not in text
    assert not re.search(r"(^|[\s`(\[])/(?=[A-Za-z])", text, re.M), "an absolute path"


def test_cpu_model_from_cpuinfo():
    info = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD  EPYC 7B13\n"
    assert cpu_model(info) == "AMD EPYC 7B13"
    assert cpu_model("Processor\t: AArch64 Processor rev 4 (aarch64)\n").startswith("AArch64")
    m = machine_info({"ttft": 1})
    assert m["threads"] == {"ttft": 1} and m["logical_cpus"] >= 1
    json.dumps(m)  # what bench/results.json stores


def test_figures_need_no_torch_or_numpy():
    code = (
        "import sys; from bench import figures; figures.rendered(); "
        "print(sorted(m for m in ('torch', 'numpy', 'fints_edge') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True
    )
    assert out.stdout.strip() == "[]"


def _bench_imports(path: Path) -> set[str]:
    """bench.* modules a file imports, at the top or inside functions."""
    got = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "bench":
                got |= {f"bench.{a.name}" for a in node.names}
            elif node.module.startswith("bench."):
                got.add(node.module)
        elif isinstance(node, ast.Import):
            got |= {a.name for a in node.names if a.name.startswith("bench.")}
    return got


def test_bench_has_no_import_cycle_and_rendering_imports_no_measuring():
    graph = {f"bench.{p.stem}": _bench_imports(p) for p in (ROOT / "bench").glob("*.py")}
    assert graph["bench.render"] == set() and graph["bench._common"] == set()
    assert "bench.run" not in graph["bench.serve"]

    def visit(node: str, path: tuple[str, ...]) -> None:
        for dep in graph.get(node, ()):
            assert dep not in path, f"import cycle: {' -> '.join((*path, dep))}"
            visit(dep, (*path, dep))

    for module in graph:
        visit(module, (module,))


@pytest.mark.parametrize("placeholder", [None, "A sourced sentence [1]."])
def test_float_path_sentence_is_a_placeholder_until_sourced(monkeypatch, placeholder):
    monkeypatch.setattr(figures, "FLOAT_PATH_NOTE", placeholder)
    text = figures.rendered(ROOT)
    assert (placeholder or figures.FLOAT_PATH_PLACEHOLDER) in text
