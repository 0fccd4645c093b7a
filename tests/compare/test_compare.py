"""lmobj compare: objective specs, presets, the report's numbers, cached runs, refused changes, the demo preset."""

import base64
import json
import re
import sys

import pytest

from lmobjectives.cli import main
from lmobjectives.compare import PRESETS, CompareConfig, compare, parse_objective, runner
from lmobjectives.compare.report import _entry, _scored, better, format_table, verdicts, write_report
from lmobjectives.recipes import OBJECTIVES

TINY = ["--batch-size", "4", "--seq-len", "32", "--d-model", "32", "--layers", "1", "--heads", "2", "--d-ff", "64"]
TINY_CONFIG = {
    "batch_size": 4,
    "seq_len": 32,
    "d_model": 32,
    "n_layers": 1,
    "n_heads": 2,
    "d_ff": 64,
    "progress": False,
}


# --- objective specs -------------------------------------------------------------------------------------------


def test_parse_objective_worked_example():
    spec = parse_objective("mlm:unit=word,probability=0.4")
    assert (spec.label, spec.objective, spec.options) == (
        "mlm:unit=word,probability=0.4",
        "mlm",
        {"unit": "word", "probability": 0.4},
    )
    assert spec.slug == "mlm-unit=word-probability=0.4"
    assert parse_objective("clm").options == {}
    assert parse_objective("nsp:max-predictions=none,unit=word").options == {"max_predictions": None, "unit": "word"}
    assert parse_objective("mtp:head_design=sequential,memory_efficient=false").options == {
        "head_design": "sequential",
        "memory_efficient": False,
    }
    # a tuple's commas stay inside it; a comma followed by key= starts the next option
    assert parse_objective("ul2:rates=0.5,0.5,layout=decoder_only").options == {
        "rates": [0.5, 0.5],
        "layout": "decoder_only",
    }


@pytest.mark.parametrize(
    "text, message",
    [
        ("gpt", "unknown objective 'gpt'"),
        ("plm", "cannot be trained"),
        ("mlm:unitt=word", "unknown option 'unitt' of mlm; its options are: probability"),
        ("mlm:probability=lots", "option probability takes a float, got 'lots'"),
        ("clm:document_masking=maybe", "is a switch: true or false, got 'maybe'"),
        ("mtp:head_design=diagonal", "option head_design must be one of 'parallel', 'sequential', got 'diagonal'"),
        ("mlm:word", "expected key=value"),
        ("mlm:unit=word,unit=span", "given twice"),
    ],
)
def test_parse_objective_errors(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_objective(text)


def test_config_errors_name_what_is_wrong():
    with pytest.raises(
        ValueError, match=re.escape("objective spec 'mlm:unit=wrd': objective 'mlm': unit must be one of")
    ):
        CompareConfig(objectives=("mlm:unit=wrd",))  # the value is checked before anything trains
    with pytest.raises(ValueError, match="unknown preset 'bert'; choose one of: demo"):
        CompareConfig.from_preset("bert")
    with pytest.raises(ValueError, match="unknown evaluation task"):
        CompareConfig(objectives=("clm",), tasks=("perplexity",))
    with pytest.raises(ValueError, match="must differ"):
        CompareConfig(objectives=("clm", "clm"))
    with pytest.raises(ValueError, match="at least one objective"):
        CompareConfig()
    with pytest.raises(ValueError, match="scale must be a positive number"):
        CompareConfig.from_preset("demo", scale=0)


def test_presets_are_valid_and_scale():
    for name, preset in PRESETS.items():
        config = CompareConfig.from_preset(name)
        assert config.objectives == preset.objectives and config.preset == name
        assert all(not OBJECTIVES[s.objective].untrainable for s in config.specs)
    demo = CompareConfig.from_preset("demo", scale=0.05, seeds=1)
    assert (demo.steps, demo.seeds) == (round(PRESETS["demo"].settings["steps"] * 0.05), 1)
    assert CompareConfig.from_preset("demo", scale=1e-6).steps == 1


# --- the report's reading of the numbers -----------------------------------------------------------------------


def _results(values: dict[str, list[float]], metric="accuracy", methods=None, scored=None):
    cells = {}
    for label, vs in values.items():
        cells[label] = {
            f"t.{metric}": {
                "values": vs,
                "mean": sum(vs) / len(vs),
                "min": min(vs),
                "max": max(vs),
                "n": len(vs),
                "scored": scored,
            }
        }
    runs = [
        {
            "label": label,
            "evaluation": {
                "t": {"applies": True, "metrics": {metric: 0.0}, "info": {"method": methods[label]} if methods else {}}
            },
        }
        for label in values
    ]
    return {
        "labels": list(values),
        "metrics": [{"key": f"t.{metric}", "task": "t", "metric": metric, "better": better(metric), "headline": True}],
        "summary": cells,
        "not_applicable": {},
        "runs": runs,
    }


def test_verdicts_compare_against_the_spread():
    apart = verdicts(_results({"a": [0.50, 0.52], "b": [0.40, 0.45]}))
    assert apart == [
        (
            "t accuracy (higher is better): a 0.510, then b 0.425: a difference of 0.085, larger than the spread "
            "over seeds (the ranges do not overlap)."
        )
    ]
    overlap = verdicts(_results({"a": [0.40, 0.52], "b": [0.45, 0.46]}))
    assert overlap[0].endswith("no difference beyond the spread over seeds (the ranges overlap).")
    one_seed = verdicts(_results({"a": [3.0], "b": [2.0]}, metric="loss"))
    assert one_seed[0].startswith("t loss (lower is better): b 2.000, then a 3.000; one seed each")
    methods = {"a": "masked", "b": "candidates"}
    assert "not compared" in verdicts(_results({"a": [3.0, 3.1], "b": [2.0, 2.1]}, "loss", methods))[0]
    assert (
        "measured by different methods: a: masked, b: candidates"
        in verdicts(_results({"a": [0.5, 0.5], "b": [0.4, 0.4]}, methods=methods))[0]
    )
    assert _entry({"mean": 0.5, "min": 0.4, "max": 0.6, "n": 2}) == "0.500 (0.400–0.600)"


def test_verdicts_weigh_an_accuracy_against_its_sampling_error():
    # 0.510 vs 0.425 over 84 items each: standard error of the difference sqrt(.51*.49/84 + .425*.575/84) = 0.0768
    few = verdicts(_results({"a": [0.50, 0.52], "b": [0.40, 0.45]}, scored=84))
    assert few == [
        (
            "t accuracy (higher is better): a 0.510, then b 0.425: a difference of 0.085, larger than the spread "
            "over seeds but less than twice the evaluation's sampling error (±0.077, binomial over 84 and 84 "
            "items): more held-out data would be needed to call it a difference."
        )
    ]
    many = verdicts(_results({"a": [0.50, 0.52], "b": [0.40, 0.45]}, scored=2000))  # ±0.016: the gap stands
    assert many[0].endswith("larger than the spread over seeds (the ranges do not overlap).")
    assert _scored({"targets": 10, "hidden_tokens": 3}, "accuracy") == 10 and _scored({"targets": 10}, "loss") is None
    assert _scored({"nsp": {"pairs": 135}, "test_sentences": 9}, "nsp_balanced_accuracy") == 135


# --- end to end: the demo preset at a tiny size, through the command line ----------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "demo"
    argv = ["compare", "--preset", "demo", "--scale", "0.025", *TINY, "--out", str(out), "--no-progress"]
    return out, argv


@pytest.mark.slow
def test_demo_preset_end_to_end_report_holds_the_runs_numbers(demo, capsys):
    out, argv = demo
    assert main(argv) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["labels"] == ["clm", "mlm"] and results["seeds"] == [0, 1]
    assert results["budget"]["input_tokens"] == 10 * 4 * 32 and results["command"] == "lmobj " + " ".join(
        a for a in argv if a != "--no-progress"
    )
    runs = {(r["label"], r["seed"]): r for r in results["runs"]}
    assert set(runs) == {("clm", 0), ("clm", 1), ("mlm", 0), ("mlm", 1)}
    for (label, seed), run in runs.items():
        run_dir = out / "runs" / label / f"seed-{seed}"
        saved = json.loads((run_dir / "compare-run.json").read_text())
        assert saved["evaluation"] == run["evaluation"]  # the raw numbers are the run's own
        lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [p["loss"] for p in run["curve"]] == [row["loss"] for row in lines] and lines[-1]["step"] == 10
    # each cell is the mean / min / max over the seeds of the runs' numbers
    for label in ("clm", "mlm"):
        values = [runs[(label, s)]["evaluation"]["next_token"]["metrics"]["bits_per_byte"] for s in (0, 1)]
        cell = results["summary"][label]["next_token.bits_per_byte"]
        assert cell["mean"] == pytest.approx(sum(values) / 2) and (cell["min"], cell["max"]) == (
            min(values),
            max(values),
        )
        md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
        assert _entry(cell) in md and _entry(cell) in page and _entry(cell) in printed
    assert format_table(results) in printed and "report: " in printed
    assert results["summary"]["clm"]["fill_in.accuracy"]["n"] == 2
    # report.html is self-contained: its pictures are the PNG files, embedded
    png = (out / "evaluation.png").read_bytes()
    assert png.startswith(b"\x89PNG") and base64.b64encode(png).decode() in page
    assert "http" not in page.replace("lmobjectives", "")  # nothing fetched from elsewhere
    assert "![evaluation](evaluation.png)" in md and "lmobj compare --preset demo" in md
    # the demo scores a causal model's fill-in over every non-special token of its vocabulary (256 bytes)
    assert runs[("clm", 0)]["evaluation"]["fill_in"]["info"]["candidates"] == 256
    assert runs[("mlm", 0)]["evaluation"]["fill_in"]["info"]["method"] == "masked"


@pytest.mark.slow
def test_report_without_matplotlib(demo, tmp_path, monkeypatch):
    out, argv = demo
    if not (out / "results.json").exists():
        assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    files = write_report(results, tmp_path)
    assert sorted(files) == ["html", "json", "md"] and not list(tmp_path.glob("*.png"))
    md = (tmp_path / "report.md").read_text()
    assert (
        "(no plots: pip install matplotlib)" in md
        and _entry(results["summary"]["mlm"]["next_token.bits_per_byte"]) in md
    )


@pytest.mark.slow
def test_rerun_reuses_cached_runs_and_refuses_changed_settings(demo, capsys, monkeypatch):
    out, argv = demo
    if not (out / "results.json").exists():
        assert main(argv) == 0
    before = json.loads((out / "results.json").read_text())
    capsys.readouterr()

    def no_training(config):
        raise AssertionError(f"trained {config.out} again")

    monkeypatch.setattr(runner, "train", no_training)
    monkeypatch.setattr(runner, "evaluate_run", no_training)
    assert main(argv) == 0  # every run reused: neither trained nor evaluated
    after = json.loads((out / "results.json").read_text())
    assert after["runs"] == before["runs"] and after["summary"] == before["summary"]
    capsys.readouterr()
    assert main([*argv, "--seeds", "3"]) == 2
    err = capsys.readouterr().err
    assert "holds a comparison made with other settings (seeds: 2 then, 3 now)" in err and "--out" in err
    assert main([a if a != "0.025" else "0.05" for a in argv]) == 2
    assert "steps: 10 then, 20 now" in capsys.readouterr().err


def test_interrupted_compare_continues(tmp_path, monkeypatch):
    config = CompareConfig(
        objectives=("clm",), tasks=("next_token",), steps=6, log_every=2, out=str(tmp_path / "c"), **TINY_CONFIG
    )
    real_train = runner.train

    def interrupted(train_config):  # as if Ctrl-C came after step 4: a checkpoint, then stop
        train_config.stop_after = 4
        return real_train(train_config)

    monkeypatch.setattr(runner, "train", interrupted)
    first = compare(config)
    assert not first.complete and not (tmp_path / "c" / "results.json").exists()
    steps = []
    monkeypatch.setattr(runner, "train", lambda c: steps.append(c.resume) or real_train(c))
    second = compare(config)
    assert second.complete and steps == [True]
    metrics = (tmp_path / "c" / "runs" / "clm" / "seed-0" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics] == [2, 4, 6]  # continued from step 4, not restarted
    assert second.results["runs"][0]["steps"] == 6


def test_out_folder_that_is_not_a_comparison_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not a comparison"):
        compare(CompareConfig(objectives=("clm",), steps=1, out=str(tmp_path), **TINY_CONFIG))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_several_processes_are_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun --nproc-per-node 2 sets it
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ValueError, match=r"WORLD_SIZE=2 \(rank 1\): lmobj compare trains in one process"):
        compare(CompareConfig(objectives=("clm",), steps=1, out=str(tmp_path / "cmp"), **TINY_CONFIG))
    assert not (tmp_path / "cmp").exists()


def test_cli_errors(capsys):
    with pytest.raises(SystemExit) as e:
        main(["compare", "clm", "mlm:unit=wrd"])
    assert e.value.code == 2 and "objective spec 'mlm:unit=wrd'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["compare", "--preset", "bert"])
    assert e.value.code == 2 and "invalid choice: 'bert'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["compare"])
    assert e.value.code == 2 and "give objective specs" in capsys.readouterr().err
    assert main(["compare", "--list-presets"]) == 0
    listed = capsys.readouterr().out
    assert all(f"{name}: " in listed for name in PRESETS)


def test_a_cached_evaluation_of_every_task_is_redone_when_a_task_is_added(tmp_path, monkeypatch):
    from lmobjectives import evaluation

    config = CompareConfig(objectives=("clm",), tasks=None, steps=6, out=str(tmp_path / "c"), **TINY_CONFIG)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / runner.RUN_FILE).write_text(
        json.dumps({"format": runner.FORMAT, "tasks": runner._task_list(config), "steps": 6})
    )
    assert runner._task_list(config)["tasks"] == list(evaluation.TASKS)
    assert runner._read_cached(run_dir, config) == {"steps": 6}
    monkeypatch.setitem(evaluation.TASKS, "new_task", evaluation.TASKS["next_token"])
    assert runner._read_cached(run_dir, config) is None  # evaluated again (the training itself is resumed, not redone)


def test_a_tasks_metrics_stay_together_whichever_run_has_them():
    from lmobjectives.compare.report import summarise

    def run(label, fill_in):
        return {
            "label": label,
            "seed": 0,
            "train_s": 1.0,
            "eval_s": 1.0,
            "evaluation": {
                "next_token": {"applies": True, "metrics": {"loss": 1.0}},
                "fill_in": {"applies": True, "metrics": fill_in},
                "probe": {"applies": True, "metrics": {"accuracy": 0.5}},
            },
        }

    config = CompareConfig(objectives=("clm", "mlm"), tasks=("next_token",), steps=1)
    results = summarise(
        config, [run("clm", {"accuracy": 0.9}), run("mlm", {"accuracy": 0.4, "bits_per_byte": 3.0})], elapsed_s=1.0
    )
    assert [m["key"] for m in results["metrics"]] == [
        "next_token.loss",
        "fill_in.accuracy",
        "fill_in.bits_per_byte",
        "probe.accuracy",
    ]
