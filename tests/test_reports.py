"""``fedpriv report``: sources file, statistics, matching runs to the sources' rows, bad input."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from fedpriv.cli import main as cli_main
from fedpriv.errors import ConfigError
from fedpriv.reports.runs import load_run, select_round
from fedpriv.reports.sources import SOURCES_PATH, load_sources
from fedpriv.reports.statistics import summarise
from fedpriv.results import RunFolder


def _write_run(root: Path, name: str, dataset: str, defenses: dict[int, str], psnr: dict[tuple[int, int], float],
               accuracy: list[float], model: str = "resnet20", attack: str = "inverting-gradients") -> Path:
    """A run folder as the strategy writes it: config.json, metrics.jsonl, rounds.jsonl."""
    folder = RunFolder(root / name)
    run_config = {"dataset": dataset, "model": model, "protocol": "fedsgd", "dp": "none", "attack-iterations": 300,
                  "num-server-rounds": len(accuracy) - 1, "attacks": attack, "aux-type": "same"}
    clients = {str(p): {"defense": d, "attacks": [attack]} for p, d in defenses.items()}
    folder.write_json("config.json", {"run-config": run_config, "clients": clients})
    folder.append(folder.metrics_path, [
        {"round": r, "partition_id": p, "defense": defenses[p], "attack": attack, "n_images": 1, "psnr": v,
         "psnr_defended": v - 1.0, "ssim": 0.1, "mse": 10 ** (-v / 10), "status": "ok"}
        for (r, p), v in sorted(psnr.items())])
    folder.append(folder.rounds_path, [{"round": r, "accuracy": a} for r, a in enumerate(accuracy)])
    return folder.path


def _comparison(out: Path) -> list[dict[str, str]]:
    with (out / "comparison.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_sources_file_has_a_citation_and_a_number_for_every_value() -> None:
    tables = {t.id: t for t in load_sources()}
    expected = {"ats-table1-cifar100", "ats-table1-fmnist", "ats-table2", "xiang-table1",
                "xiang-table2-cifar10", "xiang-table2-cifar100", "xiang-angles", "xiang-repro-table3",
                "xiang-repro-table4", "yang-table2", "yang-truncation"}
    assert expected <= set(tables)
    ats = tables["ats-table1-cifar100"]
    none = next(r for r in ats.rows if r.label == "None")
    assert none.values["psnr_paper"].mean == 13.88 and none.values["psnr_repro"].std == 2.19
    assert tables["xiang-angles"].rows[0].values["error"].mean == pytest.approx(0.7890)
    for table in tables.values():
        assert table.citation and table.source and "seed" not in table.source.lower() + table.id
        for row in table.rows:
            for value in row.values.values():
                assert math.isfinite(value.mean) and row.label in value.cite
    mnist = next(r for r in tables["yang-table2"].rows if r.label == "MNIST")  # Yang Table II, from the paper
    assert mnist.values["recon_black_box"].mean == 0.3120 and mnist.values["recon_joint"].mean == 0.0197
    assert all(not r.values for r in tables["yang-truncation"].rows)  # measured only


def test_a_bad_sources_file_names_the_bad_entry(tmp_path: Path) -> None:
    text = SOURCES_PATH.read_text().replace('metric = "angle_error"', 'metric = "angle_errror"', 1)
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(ConfigError, match="angle_errror.*valid:"):
        load_sources(tmp_path / "bad.toml")


def test_summary_mean_std_and_student_t_interval() -> None:
    summary = summarise([1.0, 2.0, 3.0])
    assert (summary.mean, summary.std, summary.n) == (2.0, 1.0, 3)
    assert summary.ci_high - summary.mean == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    single = summarise([5.0])
    assert single.n == 1 and math.isnan(single.std) and single.ci_text() == "-"


def test_last_round_is_chosen_per_client_and_attack(tmp_path: Path) -> None:
    path = _write_run(tmp_path, "a", "embedded-photos", {0: "none", 1: "none"},
                      {(1, 0): 10.0, (3, 0): 20.0, (1, 1): 12.0}, [0.1, 0.2, 0.3, 0.4])
    chosen = select_round(load_run(path).samples, "last")
    psnr = sorted((s.partition, s.round, s.value) for s in chosen if s.metric == "psnr")
    assert psnr == [(0, 3, 20.0), (1, 1, 12.0)]
    assert [s.value for s in chosen if s.metric == "accuracy_pct"] == [pytest.approx(40.0)]
    with pytest.raises(ConfigError, match="valid: 'last', 'all'"):
        select_round(chosen, "final")


def test_report_puts_measured_values_beside_the_source_row_and_never_mixes_data_sets(tmp_path: Path) -> None:
    photos = _write_run(tmp_path, "photos", "embedded-photos", {0: "ats:3-1-7+43-18-18", 1: "ats:3-1-7"},
                        {(2, 0): 11.0, (2, 1): 9.0}, [0.1, 0.2, 0.3])
    photos2 = _write_run(tmp_path, "photos2", "embedded-photos", {0: "ats:hybrid(3-1-7,43-18-18)", 1: "none"},
                         {(2, 0): 13.0, (2, 1): 15.0}, [0.1, 0.2, 0.3])
    cifar = _write_run(tmp_path, "cifar", "cifar100", {0: "ats:hybrid(3-1-7,43-18-18)"}, {(1, 0): 30.0}, [0.1, 0.5])
    out = tmp_path / "report"
    assert cli_main(["report", str(photos), str(photos2), str(cifar), "--out", str(out)]) == 0
    rows = [r for r in _comparison(out) if r["table"] == "ats-table1-cifar100" and r["row"] == "Hybrid"
            and r["column"] == "PSNR paper (dB)"]
    by_dataset = {r["dataset"]: r for r in rows}
    # the alias and the canonical hybrid spec are one row; psnr_defended = psnr - 1 in these folders
    assert float(by_dataset["embedded-photos"]["mean"]) == pytest.approx(11.0)
    assert by_dataset["embedded-photos"]["n"] == "2" and by_dataset["embedded-photos"]["runs"] == "photos photos2"
    assert "data set embedded-photos (source: cifar100)" in by_dataset["embedded-photos"]["deviations"]
    assert float(by_dataset["cifar100"]["mean"]) == pytest.approx(29.0) and by_dataset["cifar100"]["n"] == "1"
    assert "data set" not in by_dataset["cifar100"]["deviations"]
    assert float(rows[0]["source_value"]) == 7.64 and "Table 1" in rows[0]["citation"]
    report = (out / "report.md").read_text()
    assert "### Data set `cifar100`" in report and "### Data set `embedded-photos`" in report
    for name in ("psnr_per_round_embedded-photos.png", "psnr_per_round_cifar100.png", "gallery.html", "summary.csv"):
        assert (out / name).exists(), name
    # a mixed-defense run's accuracy belongs to no row; the uniform cifar run's does
    accuracy = [r for r in _comparison(out) if r["table"] == "ats-table1-cifar100" and r["metric"] == "accuracy_pct"
                and r["mean"]]
    assert [(r["row"], r["dataset"], float(r["mean"])) for r in accuracy] == [
        ("Hybrid", "cifar100", pytest.approx(50.0)), ("Hybrid", "cifar100", pytest.approx(50.0))]


def test_bad_input_is_refused_before_anything_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _write_run(tmp_path, "good", "embedded-photos", {0: "none"}, {(1, 0): 10.0}, [0.1, 0.2])
    not_a_run = tmp_path / "notes"
    not_a_run.mkdir()
    (not_a_run / "config.json").write_text(json.dumps({"something": 1}))
    out = tmp_path / "report"
    assert cli_main(["report", str(good), str(not_a_run), "--out", str(out)]) == 2
    assert "is not a fedpriv run folder" in capsys.readouterr().err and not out.exists()
    assert cli_main(["report", str(good), str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert cli_main(["report", str(good), str(good), "--out", str(out)]) == 2
    assert "more than once" in capsys.readouterr().err
    assert cli_main(["report", str(good), "--round", "last-but-one", "--out", str(out)]) == 2
    assert not out.exists()
    assert cli_main(["report", "--out", str(out)]) == 2


def test_ats_geometry_is_a_named_deviation_of_the_fashion_mnist_rows(tmp_path: Path) -> None:
    resized = _write_run(tmp_path, "resized", "embedded-digits", {0: "ats:19-15-45"}, {(1, 0): 12.0}, [0.1, 0.2])
    reference = _write_run(tmp_path, "reference", "embedded-digits", {0: "ats:19-15-45;geometry=reference"},
                           {(1, 0): 14.0}, [0.1, 0.2])
    for run, mean, marked in ((resized, 11.0, True), (reference, 13.0, False)):
        out = tmp_path / f"report-{run.name}"
        assert cli_main(["report", str(run), "--out", str(out)]) == 0
        row = next(r for r in _comparison(out) if r["table"] == "ats-table1-fmnist" and r["row"] == "19-15-45"
                   and r["column"] == "PSNR paper (dB)")
        assert float(row["mean"]) == pytest.approx(mean)
        assert ("ATS geometry resized (source: reference)" in row["deviations"]) is marked


def test_runs_of_the_two_ats_geometries_are_separate_lines(tmp_path: Path) -> None:
    resized = _write_run(tmp_path, "resized", "embedded-digits", {0: "ats:19-15-45"}, {(1, 0): 12.0}, [0.1, 0.2])
    reference = _write_run(tmp_path, "reference", "embedded-digits", {0: "ats:19-15-45;geometry=reference"},
                           {(1, 0): 14.0}, [0.1, 0.2])
    out = tmp_path / "report"
    assert cli_main(["report", str(resized), str(reference), "--out", str(out)]) == 0
    rows = [r for r in _comparison(out) if r["table"] == "ats-table1-fmnist" and r["row"] == "19-15-45"
            and r["column"] == "PSNR paper (dB)"]
    assert sorted((r["geometry"], float(r["mean"]), r["n"]) for r in rows) == [("reference", 13.0, "1"),
                                                                                ("resized", 11.0, "1")]


def test_a_damaged_line_is_refused_with_its_file_and_line_unless_skipped(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _write_run(tmp_path, "a", "embedded-photos", {0: "none"}, {(1, 0): 10.0, (2, 0): 12.0}, [0.1, 0.2, 0.3])
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[0] + "\n" + '{"round": 2, "psn\n' + lines[1][:30])  # corrupt, cut short
    out = tmp_path / "report"
    assert cli_main(["report", str(run), "--out", str(out), "--round", "all"]) == 2
    assert f"{run / 'metrics.jsonl'} line 2 is damaged (not a JSON object) (and 1 more)" in capsys.readouterr().err
    assert not out.exists()
    assert cli_main(["report", str(run), "--out", str(out), "--round", "all", "--skip-damaged"]) == 0
    report = (out / "report.md").read_text()
    assert f"Damaged lines left out (--skip-damaged): 2: {run / 'metrics.jsonl'} line 2; " in report
    psnr = [r for r in csv.DictReader((out / "summary.csv").open()) if r["metric"] == "psnr"]
    assert [(r["n"], float(r["mean"])) for r in psnr] == [("1", 10.0)]


def test_an_unfinished_run_is_refused_unless_allowed_then_marked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _write_run(tmp_path, "a", "embedded-photos", {0: "none"}, {(1, 0): 10.0}, [0.1, 0.2])
    config = json.loads((run / "config.json").read_text())
    config["run-config"]["num-server-rounds"] = 3
    (run / "config.json").write_text(json.dumps(config))
    out = tmp_path / "report"
    assert cli_main(["report", str(run), "--out", str(out)]) == 2
    assert f"{run} finished 1 of 3 rounds (num-server-rounds)" in capsys.readouterr().err and not out.exists()
    assert cli_main(["report", str(run), "--out", str(out), "--allow-incomplete"]) == 0
    report = (out / "report.md").read_text()
    assert "| 1 of 3 (incomplete) |" in report and "Unfinished runs (--allow-incomplete): a;" in report


def test_values_after_a_diverged_round_are_no_results(tmp_path: Path) -> None:
    run = _write_run(tmp_path, "a", "embedded-photos", {0: "none"}, {(1, 0): 10.0, (2, 0): 8.0}, [0.1, 0.2, 0.22])
    rounds = [{"round": 0, "accuracy": 0.1, "loss": 2.3}, {"round": 1, "accuracy": 0.2, "loss": "nan"},
              {"round": 2, "accuracy": 0.22, "loss": "nan"}]
    (run / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
    loaded = load_run(run)
    assert loaded.diverged_after == 1
    assert sorted((s.metric, s.round) for s in loaded.samples if s.metric in ("psnr", "accuracy")) == [
        ("accuracy", 0), ("psnr", 1)]


def test_run_names_are_inert_in_the_markdown_and_the_csv_files(tmp_path: Path) -> None:
    evil = '<img src=x onerror=alert(1)>'
    formula = '=1+2'
    runs = [_write_run(tmp_path, name, "embedded-photos", {0: "none"}, {(1, 0): 10.0}, [0.1, 0.2])
            for name in (evil, formula)]
    out = tmp_path / "report"
    assert cli_main(["report", *map(str, runs), "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "<img" not in report and "&lt;img src=x onerror=alert(1)&gt;" in report
    for name in ("summary.csv", "frontier.csv"):
        cells = [cell for row in csv.reader((out / name).open()) for cell in row]
        assert not any(cell.startswith(("=", "+", "@")) for cell in cells), name
        assert any(formula in cell for cell in cells), name
    assert "-" in [row["attack"] for row in csv.DictReader((out / "summary.csv").open())]  # a placeholder, kept


def test_the_report_shows_each_psnr_cells_baseline_and_marks_failed_attacks(tmp_path: Path) -> None:
    folder = _write_run(tmp_path, "verdicts", "cifar100", {0: "none", 1: "ats:3-1-7"},
                        {(1, 0): 20.0, (2, 0): 21.0, (1, 1): 9.0, (2, 1): 10.0}, [0.1, 0.2, 0.3])
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    for row in rows:  # the undefended client beats its 12 dB baseline, the defended one does not
        row |= {"psnr_grey": 12.0, "psnr_baseline": 12.0, "beats_baseline": row["psnr"] >= 13.0}
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "report"
    assert cli_main(["report", str(folder), "--round", "all", "--out", str(out)]) == 0
    with (out / "summary.csv").open() as handle:
        psnr = {r["defense"]: r for r in csv.DictReader(handle) if r["metric"] == "psnr"}
    assert psnr["none"]["beat_baseline"] == "2/2" and float(psnr["none"]["baseline"]) == pytest.approx(12.0)
    assert psnr["ats:3-1-7"]["beat_baseline"] == "0/2"
    report = (out / "report.md").read_text()
    assert "**0/2: attack failed, says nothing about the defense**" in report
    compared = [r for r in _comparison(out) if r["table"] == "ats-table1-cifar100"
                and r["column"] == "PSNR paper (dB)" and r["mean"]]
    assert {r["row"]: r["beat_baseline"] for r in compared} == {"None": "2/2", "3-1-7": "0/2"}
    assert "(n=2), beat the baseline vs x: 2/2" in report


def test_readouts_of_malicious_layers_are_put_beside_the_expected_recovered_counts(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "imprint")
    run_config = {"dataset": "embedded-photos", "model": "convnet", "protocol": "secagg", "dp": "none",
                  "num-server-rounds": 1, "attacks": "imprint-readout", "server-behaviour": "imprint",
                  "behaviour.imprint.bins": 64}
    folder.write_json("config.json", {"run-config": run_config, "clients": {}})
    row = {"round": 1, "defense": "none", "attack": "imprint-readout", "psnr": 27.5, "psnr_baseline": 11.1,
           "status": "ok"}
    folder.append(folder.metrics_path, [row | {"partition_id": -1, "aggregate_of": [0, 1, 2], "n_images": 12,
                                               "images_recovered": 6},
                                        row | {"partition_id": 4, "n_images": 8, "images_recovered": 7}])
    folder.append(folder.rounds_path, [{"round": 0, "accuracy": 0.1}, {"round": 1, "accuracy": 0.1}])
    trapped = RunFolder(tmp_path / "trap")
    trapped.write_json("config.json", {"run-config": run_config | {
        "protocol": "fedsgd", "attacks": "trap-readout", "server-behaviour": "trap-weights",
        "behaviour.trap-weights.rows": 256}, "clients": {}})
    trapped.append(trapped.metrics_path, [row | {"attack": "trap-readout", "partition_id": 0, "n_images": 8,
                                                 "images_recovered": 4},
                                          row | {"partition_id": 1, "n_images": 8, "images_recovered": 8}])
    trapped.append(trapped.rounds_path, [{"round": 0, "accuracy": 0.1}, {"round": 1, "accuracy": 0.1}])
    out = tmp_path / "report"
    assert cli_main(["report", str(folder.path), str(trapped.path), "--out", str(out)]) == 0
    with (out / "recovered.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["behaviour"], r["leak"], r["images"], r["bins"], r["recovered"]) for r in rows] == [
        ("imprint", "aggregate of 3", "12", "64", "6"), ("imprint", "client 4", "8", "64", "7"),
        ("trap-weights", "client 0", "8", "256", "4")]  # the trap run's imprint-readout row is not its readout
    assert float(rows[1]["independent_draws"]) == pytest.approx(8 * (63 / 64) ** 7)
    assert float(rows[0]["fowl_et_al"]) < float(rows[0]["independent_draws"])
    assert rows[2]["independent_draws"] == rows[2]["fowl_et_al"] == ""
    report = (out / "report.md").read_text()
    assert "## Images recovered exactly (malicious server)" in report
    assert "| trap-weights | 1 | client 0 | 8 | 256 | 4 | — | — |" in report
