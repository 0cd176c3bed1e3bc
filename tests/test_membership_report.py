"""``fedpriv report``'s membership section: each observer's last scored round, the audit beside the accountant, ROC."""

from __future__ import annotations

import csv
from pathlib import Path

from PIL import Image

from fedpriv.cli import main as cli_main
from fedpriv.reports.figures import roc_curves
from fedpriv.reports.membership import membership_rows
from fedpriv.reports.runs import load_runs
from fedpriv.results import RunFolder


def _membership_run(root: Path, name: str, dp: str, noise: float, bounds: dict[str, float], epsilon: float | None,
                    auc: float) -> Path:
    """A two-round run folder with the server's and the released model's membership rows."""
    folder = RunFolder(root / name)
    run_config = {"dataset": "embedded-digits", "model": "convnet-gn", "protocol": "fedavg", "dp": dp,
                  "dp-noise-multiplier": noise, "num-server-rounds": 2, "attacks": "label-inference",
                  "membership-attacks": "loss,update-alignment", "audit-canaries": 200}
    folder.write_json("config.json", {"run-config": run_config, "clients": {}})
    folder.append(folder.rounds_path, [{"round": r, "accuracy": a} for r, a in enumerate([0.1, 0.5, 0.7])])
    rows = []
    for run_round in (1, 2):
        for observer, attack in (("server", "update-alignment"), ("released model", "loss")):
            value = auc if run_round == 2 else 0.5
            rows += [
                {"round": run_round, "observer": observer, "attack": "canary-audit", "canaries": 200,
                 "epsilon_lower_bound": bounds[observer] if run_round == 2 else 0.0, "dp_epsilon": epsilon},
                {"round": run_round, "observer": observer, "attack": attack, "auc": value, "auc_low": value - 0.08,
                 "auc_high": value + 0.08, "tpr_at_fpr_0.001": 0.01, "tpr_at_fpr_0.01": 0.05,
                 "beats_chance": value - 0.08 > 0.5, "roc_fpr": [0.0, 0.01, 0.1, 1.0],
                 "roc_tpr": [0.0, 0.05, value - 0.3, 1.0]}]
    rows.append({**rows[-3], "partition_id": 1, "auc": 0.9, "auc_low": 0.82, "auc_high": 0.98})  # one client's
    folder.append(folder.membership_path, rows)
    return folder.path


def test_the_report_tables_each_observers_bound_beside_the_accountant_per_dp_mode(tmp_path: Path) -> None:
    plain = _membership_run(tmp_path, "none", "none", 0.0, {"server": 3.09, "released model": 1.46}, None, 0.676)
    central = _membership_run(tmp_path, "central", "client-fixed", 1.0, {"server": 0.26, "released model": 0.0},
                              9.01, 0.55)
    out = tmp_path / "report"
    assert cli_main(["report", str(plain), str(central), "--out", str(out)]) == 0
    with (out / "membership.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    audits = [(r["run"], r["dp"], r["noise"], r["round"], r["observer"], r["epsilon_lower_bound"], r["dp_epsilon"])
              for r in rows if r["attack"] == "canary-audit"]
    assert audits == [("none", "none", "", "2", "server", "3.09", ""),
                      ("none", "none", "", "2", "released model", "1.46", ""),
                      ("central", "client-fixed", "1.0", "2", "server", "0.26", "9.01"),
                      ("central", "client-fixed", "1.0", "2", "released model", "0.0", "9.01")]
    report = (out / "report.md").read_text()
    assert "## Membership inference" in report
    assert "| central | client-fixed | 1 | 2 | server | 0.260 | 9.01 | 200 | 0.700 |" in report
    assert ("| none | none | — | 2 | server | update-alignment | all | 0.676 [0.596, 0.756] | 1.0 % | 5.0 % | yes | "
            "0.700 |") in report
    assert ("| none | none | — | 2 | server | update-alignment | 1 | 0.900 [0.820, 0.980] | 1.0 % | 5.0 % | "
            "yes |") in report
    assert ("| central | client-fixed | 1 | 2 | released model | loss | all | 0.550 [0.470, 0.630] | 1.0 % | 5.0 % | "
            "**no** |") in report
    assert "![ROC curves of the membership attacks](membership_roc.png)" in report
    with Image.open(out / "membership_roc.png") as figure:
        assert figure.size[0] > 300
    client_rows = [r for r in membership_rows(load_runs([plain])) if r["partition_id"] is not None]
    assert len(client_rows) == 1 and not roc_curves(client_rows, tmp_path / "none.png")  # pooled curves only


def test_a_report_without_membership_rows_has_no_membership_section(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "plain")
    folder.write_json("config.json", {"run-config": {"dataset": "embedded-digits", "num-server-rounds": 1},
                                      "clients": {}})
    folder.append(folder.rounds_path, [{"round": 0, "accuracy": 0.1}, {"round": 1, "accuracy": 0.2}])
    out = tmp_path / "report"
    assert cli_main(["report", str(folder.path), "--out", str(out)]) == 0
    assert "Membership inference" not in (out / "report.md").read_text()
    assert not (out / "membership_roc.png").exists()
