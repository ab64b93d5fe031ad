"""`latentdesk bench compare` (app/cli/bench/): ours against diffusers, measured side by side.

One quick comparison (tiny models, 64x64) runs through the command line once for the module;
the tests read what it wrote. The parity test rebuilds the bench's own models and inputs to show
that the two sides it times compute the same thing.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from app.cli.bench.cases import relative_difference, unet_step_work, vae_decode_work
from app.cli.bench.compare import CASES, models_named
from app.cli.bench.pair import build_pair
from app.cli.bench.specs import SD15, TINY
from app.cli.commands import main
from core.resources import builtin_model_path

PARITY = 1e-3
RUNS = 3


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    json_path, markdown_path = folder / "bench.json", folder / "bench.md"
    assert main(["bench", "compare", "--quick", "--runs", str(RUNS), "--json", str(json_path),
                 "--markdown", str(markdown_path)]) == 0
    return json.loads(json_path.read_text(encoding="utf-8")), markdown_path.read_text(encoding="utf-8")


def measured(results: dict) -> list[dict]:
    return [case for case in results["cases"] if "skipped" not in case]


def test_quick_run_covers_every_case_and_records_the_machine(quick_run):
    results, _ = quick_run
    assert [case["name"] for case in results["cases"]] == list(CASES)
    machine = results["machine"]
    assert machine["cpu"] and machine["cpu_cores"] >= 1 and machine["torch_threads"] >= 1
    assert machine["torch"] == torch.__version__ and machine["device"] == "cpu" and machine["diffusers"]
    assert results["settings"]["runs"] == RUNS and results["settings"]["quick"] is True
    assert "--quick" in results["settings"]["command"]

    by_name = {case["name"]: case for case in results["cases"]}
    assert set(by_name["txt2img"]["metrics"]["seconds"]["raw"]) == {
        "ours, preview off", "ours, fast preview every step", "ours, VAE preview every step", "diffusers"}
    assert by_name["txt2img"]["details"]["steps"] == TINY.steps
    assert set(by_name["load"]["metrics"]) >= {"seconds", "peak_rss_mb"}
    if builtin_model_path().is_file():
        assert by_name["builtin"]["baseline"] is None and "seconds" in by_name["builtin"]["metrics"]
    else:
        assert "no built-in model" in by_name["builtin"]["skipped"]


def test_medians_and_ratios_follow_from_the_raw_runs(quick_run):
    results, _ = quick_run
    for case in measured(results):
        baseline = case["baseline"]
        for metric, numbers in case["metrics"].items():
            raw = numbers["raw"]
            for name, values in raw.items():
                assert len(values) == RUNS and all(v > 0 for v in values), (case["name"], metric, name)
                assert numbers["median"][name] == pytest.approx(statistics.median(values))
            compared = [name for name in raw if name != baseline] if baseline else []
            assert sorted(numbers["ratios"]) == sorted(compared)
            for name in compared:
                pairwise = [ours / theirs for ours, theirs in zip(raw[name], raw[baseline], strict=True)]
                assert numbers["ratios"][name] == pytest.approx(pairwise)
                assert numbers["median_ratio"][name] == pytest.approx(statistics.median(pairwise))


def test_every_round_runs_each_side_once_in_rotating_order(quick_run):
    results, _ = quick_run
    for case in measured(results):
        rounds, names = case["rounds"], set(case["metrics"]["seconds"]["raw"])
        assert len(rounds) == RUNS and all(sorted(order) == sorted(names) for order in rounds)
        if len(names) > 1:   # nobody always goes first
            assert all(a[0] != b[0] for a, b in zip(rounds, rounds[1:], strict=False)), case["name"]


def test_markdown_table_shows_the_measured_medians(quick_run):
    results, markdown = quick_run
    assert markdown.startswith("# Latent Desk vs diffusers") and results["machine"]["cpu"] in markdown
    for case in measured(results):
        seconds = case["metrics"]["seconds"]
        for name, median in seconds["median"].items():
            row = f"| {case['title']} | {name} | {median:.3f} s |"
            assert row in markdown, row
        for name, ratio in seconds["median_ratio"].items():
            if case["name"].startswith("approx"):   # shown as a speed-up, exact / mode
                assert f"| {name} | {seconds['median'][name]:.3f} s | {1 / ratio:.2f}× |" in markdown
            else:
                assert f"| {name} | {seconds['median'][name]:.3f} s | {ratio:.2f} |" in markdown
    load = next(case for case in results["cases"] if case["name"] == "load")
    assert f"{load['metrics']['peak_rss_mb']['median']['ours']:,.0f} MiB" in markdown


def test_speedups_cases_record_psnr_and_what_each_mode_ran(quick_run):
    results, markdown = quick_run
    by_name = {case["name"]: case for case in results["cases"]}
    names = ["approx"] + (["approx-builtin"] if builtin_model_path().is_file() else [])
    for name in names:
        case = by_name[name]
        assert case["baseline"] == "exact" and case["details"]["steps"] == TINY.steps
        psnr, calls = case["details"]["psnr_db"], case["details"]["unet_calls"]
        assert set(psnr) == {"deep cache", "guidance cut-off", "both", "bfloat16"}
        assert all(0 < value < 100 for value in psnr.values())
        assert f"{psnr['both']:.1f} dB" in markdown
        # 3 steps: one per step; deep cache skips the deep blocks on steps 1-2 (both: the unguided last step
        # has a new batch shape, so it runs in full); the cut-off runs the last step on 1 row of 2.
        assert calls["exact"] == {"calls": 3, "deep": 3, "rows": 6}
        assert calls["deep cache"] == {"calls": 3, "deep": 1, "rows": 6}
        assert calls["guidance cut-off"] == {"calls": 3, "deep": 3, "rows": 5}
        assert calls["both"] == {"calls": 3, "deep": 2, "rows": 5}
        assert calls["bfloat16"] == calls["exact"]      # the exact request, on bfloat16 networks
        assert psnr["bfloat16"] > 30                     # close to the float32 image, not equal to it


def test_bench_records_that_both_sides_computed_the_same(quick_run):
    results, _ = quick_run
    by_name = {case["name"]: case for case in results["cases"]}
    for name in ("unet", "vae"):
        assert 0 <= by_name[name]["details"]["max_relative_difference"] < PARITY


def test_ours_and_diffusers_give_the_same_outputs_in_the_bench_setup():
    pair = build_pair(TINY)
    with torch.no_grad():
        for work in (unet_step_work(pair, "cpu"), vae_decode_work(pair, "cpu")):
            ours, theirs = work["ours"](), work["diffusers"]()
            assert ours.shape == theirs.shape and theirs.std() > 0.01   # a real output, not zeros
            assert relative_difference(ours, theirs) < PARITY
    # Same weights, not the same tensors: the two sides share no storage.
    ours_weight = pair.ours.unet.input_blocks[0][0].weight
    theirs_weight = pair.theirs["unet"].conv_in.weight
    assert torch.equal(ours_weight, theirs_weight) and ours_weight.data_ptr() != theirs_weight.data_ptr()


def test_load_subprocess_reports_sane_time_and_memory(quick_run):
    results, _ = quick_run
    load = next(case for case in results["cases"] if case["name"] == "load")
    assert 0 < load["details"]["file_mb"] < 100
    raw = load["metrics"]
    for side in ("ours", "diffusers"):
        for seconds, peak, loaded, before in zip(raw["seconds"]["raw"][side], raw["peak_rss_mb"]["raw"][side],
                                                 raw["peak_rss_load_mb"]["raw"][side],
                                                 raw["rss_before_load_mb"]["raw"][side], strict=True):
            assert 0 < seconds < 60
            # torch alone takes well over 50 MiB; a tiny model cannot need gigabytes. The peak is
            # taken after the image, so it is at least the peak of the load alone.
            assert 50 < before <= loaded <= peak < 4096, (side, before, loaded, peak)


def test_fewer_than_three_runs_are_refused(capsys):
    assert main(["bench", "compare", "--quick", "--runs", "2"]) == 2
    assert "--runs must be at least 3" in capsys.readouterr().err


def test_unknown_case_is_refused(capsys):
    assert main(["bench", "compare", "--quick", "--only", "unet", "warp"]) == 2
    assert "unknown case(s) warp" in capsys.readouterr().err


def test_without_diffusers_core_imports_and_compare_names_the_package():
    """diffusers is imported lazily: every core module loads without it, and compare says what to install."""
    script = textwrap.dedent("""
        import importlib, pkgutil, sys

        class NoDiffusers:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "diffusers":
                    raise ImportError("No module named 'diffusers'")

        sys.meta_path.insert(0, NoDiffusers())
        import core
        for module in pkgutil.walk_packages(core.__path__, "core."):
            importlib.import_module(module.name)
        from app.cli.commands import main
        sys.exit(main(["bench", "compare", "--quick", "--only", "unet"]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 2, done.stderr
    assert "pip install diffusers" in done.stderr


def test_only_the_bench_reference_imports_diffusers():
    imports_diffusers = re.compile(r"^\s*(import|from) diffusers\b", re.MULTILINE)
    root = Path(__file__).resolve().parent.parent
    bench = root / "app" / "cli" / "bench"
    allowed = {bench / "reference.py", bench / "load_probe.py"}
    importers = {path for folder in ("core", "app") for path in (root / folder).rglob("*.py")
                 if imports_diffusers.search(path.read_text(encoding="utf-8"))}
    assert importers == allowed   # and those two import it inside functions only (test_core_has_no_qt imports all)


def test_full_size_spec_is_sd15():
    """The real run's models (never built in tests: SD1.5 is too large) convert to our SD1.5 configs."""
    from app.cli.bench.specs import SD15
    from core.loading.convert_unet import unet_config_from_diffusers
    from core.loading.convert_vae import vae_config_from_diffusers
    from core.nets.unet import UNetConfig
    from core.nets.vae import VAEConfig

    assert unet_config_from_diffusers(SD15.unet) == UNetConfig()
    assert vae_config_from_diffusers(SD15.vae) == VAEConfig()
    assert (SD15.image_size, SD15.latent_size, SD15.context_dim, SD15.batch) == (512, 64, 768, 2)


def test_the_report_names_the_models_the_cases_ran_on():
    assert models_named(SD15, ["unet", "vae"]) == SD15.name
    assert "built-in" in models_named(SD15, ["builtin"]) and SD15.name not in models_named(SD15, ["builtin"])
    both = models_named(SD15, ["load", "approx-builtin"])
    assert SD15.name in both and "built-in" in both


def test_machine_info_reads_a_version_from_the_module_when_its_metadata_is_missing(monkeypatch):
    import importlib.metadata

    import diffusers

    from app.cli.bench.machine import machine_info

    def no_metadata(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", no_metadata)   # as a copied package on a GPU machine
    info = machine_info("cpu")
    assert info["diffusers"] == diffusers.__version__


# --- against OpenVINO (app/cli/bench/openvino_ref.py): a bench-only extra, skipped where it is not installed.

@pytest.fixture(scope="module")
def openvino_run():
    pytest.importorskip("openvino")
    from app.cli.bench.compare import CompareOptions, run_comparison
    from app.cli.bench.report import markdown

    results = run_comparison(CompareOptions(quick=True, runs=RUNS, against="openvino"), report=lambda line: None)
    return results, markdown(results)


def test_openvino_run_times_both_precisions_of_both_sides_in_one_rotation(openvino_run):
    import openvino

    results, _ = openvino_run
    plugin_default = openvino.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    assert results["machine"]["openvino_default_precision"] == plugin_default
    assert openvino.__version__.startswith(results["machine"]["openvino"])
    assert results["settings"]["against"] == "openvino" and "--against openvino" in results["settings"]["command"]
    assert [case["name"] for case in results["cases"]] == ["unet", "vae"]
    default = f"OpenVINO default ({plugin_default})"
    for case in results["cases"]:
        assert case["baselines"] == {"ours float32": "OpenVINO f32", "ours bfloat16": default}
        assert case["details"]["openvino_default_precision"] == plugin_default
        seconds = case["metrics"]["seconds"]
        raw = seconds["raw"]
        assert set(raw) == {"ours float32", "ours bfloat16", "OpenVINO f32", default}
        assert len(case["rounds"]) == RUNS and all(sorted(order) == sorted(raw) for order in case["rounds"])
        assert all(a[0] != b[0] for a, b in zip(case["rounds"], case["rounds"][1:], strict=False))
        for ours, theirs in case["baselines"].items():
            pairwise = [a / b for a, b in zip(raw[ours], raw[theirs], strict=True)]
            assert seconds["ratios"][ours] == pytest.approx(pairwise)
            assert seconds["median_ratio"][ours] == pytest.approx(statistics.median(pairwise))
        assert set(seconds["ratios"]) == {"ours float32", "ours bfloat16"}   # OpenVINO's runs are the baselines


def test_openvino_computes_what_ours_computes(openvino_run):
    """OpenVINO at f32 on the converted diffusers module gives our float32 output; both bfloat16 runs come near it."""
    results, _ = openvino_run
    for case in results["cases"]:
        difference = case["details"]["max_relative_difference"]
        assert difference["OpenVINO f32"] < PARITY, case["name"]
        for run in ("ours bfloat16", f"OpenVINO default ({results['machine']['openvino_default_precision']})"):
            assert 0 <= difference[run] < 0.1, (case["name"], run, difference[run])


def test_openvino_markdown_shows_each_precision_against_its_own(openvino_run):
    results, markdown = openvino_run
    assert markdown.startswith("# Latent Desk vs OpenVINO") and results["machine"]["openvino"] in markdown
    assert "| Case | Run | Median time | Ours / OpenVINO (time) |" in markdown
    for case in results["cases"]:
        seconds = case["metrics"]["seconds"]
        for run, median in seconds["median"].items():
            ratio = seconds["median_ratio"].get(run)
            shown = f"{ratio:.2f}" if ratio is not None else ""
            assert f"| {case['title']} | {run} | {median:.3f} s | {shown} |" in markdown, run


def test_against_openvino_refuses_what_it_cannot_compare():
    from app.cli.bench.compare import CompareOptions, run_comparison
    from core.errors import LatentDeskError

    with pytest.raises(LatentDeskError, match="unet and vae only, not txt2img"):
        run_comparison(CompareOptions(quick=True, against="openvino", only=("unet", "txt2img")))
    with pytest.raises(LatentDeskError, match="leave --device cpu and --dtype float32"):
        run_comparison(CompareOptions(quick=True, against="openvino", dtype="bfloat16"))
    with pytest.raises(LatentDeskError, match="--against must be one of diffusers, openvino, not 'onnx'"):
        run_comparison(CompareOptions(quick=True, against="onnx"))


def test_without_openvino_against_openvino_names_the_package():
    script = textwrap.dedent("""
        import sys

        class NoOpenVINO:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "openvino":
                    raise ImportError("No module named 'openvino'")

        sys.meta_path.insert(0, NoOpenVINO())
        from app.cli.bench.compare import CompareOptions, run_comparison
        from core.errors import LatentDeskError
        try:
            run_comparison(CompareOptions(quick=True, against="openvino"))
        except LatentDeskError as e:
            print(e)
            sys.exit(2)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 2, done.stderr
    assert "pip install openvino" in done.stdout


def test_only_the_openvino_reference_imports_openvino():
    imports_openvino = re.compile(r"^\s*(import|from) openvino\b", re.MULTILINE)
    root = Path(__file__).resolve().parent.parent
    importers = {path.relative_to(root).as_posix() for folder in ("core", "app") for path in (root / folder).rglob("*.py")
                 if imports_openvino.search(path.read_text(encoding="utf-8"))}
    assert importers == {"app/cli/bench/openvino_ref.py"}
