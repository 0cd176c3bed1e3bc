"""The run page's configuration table: one row per group of consecutive clients that share defense and attacks."""

from __future__ import annotations

from fedpriv.run_page import client_rows


def test_consecutive_clients_with_the_same_defense_and_attacks_share_a_row() -> None:
    undefended = {"defense": "none", "attacks": ["inverting-gradients"]}
    defended = {"defense": "ats:3-1-7", "attacks": ["inverting-gradients", "translation-aware"]}
    clients = {str(pid): undefended for pid in range(50)} | {str(pid): defended for pid in range(50, 100)}
    clients["7"] = defended  # one client in the middle breaks the first group
    assert client_rows(clients) == [
        ["clients 0-6", "none / inverting-gradients"],
        ["client 7", "ats:3-1-7 / inverting-gradients, translation-aware"],
        ["clients 8-49", "none / inverting-gradients"],
        ["clients 50-99", "ats:3-1-7 / inverting-gradients, translation-aware"],
    ]
    # partitions are ordered as numbers, not as the strings of the JSON keys; a gap starts a new row
    assert client_rows({"10": undefended, "9": undefended, "2": undefended}) == [
        ["client 2", "none / inverting-gradients"], ["clients 9-10", "none / inverting-gradients"]]


def test_the_dp_keys_are_shown_when_the_run_has_dp(tmp_path) -> None:
    import json

    from fedpriv.results import RunFolder
    from fedpriv.run_page import write_index

    for dp, shown in (("client-fixed", True), ("none", False)):
        folder = RunFolder(tmp_path / dp)
        run_config = {"dataset": "embedded-digits", "dp": dp, "dp-noise-multiplier": 10.0, "dp-clipping-norm": 1.0,
                      "dp-delta": 1e-05}
        (folder.path / "config.json").write_text(json.dumps({"run-config": run_config}))
        write_index(folder)
        page = (folder.path / "index.html").read_text()
        assert ("dp-noise-multiplier" in page and "dp-clipping-norm" in page) == shown, dp
        assert ("<td>1e-05</td>" in page) == shown, dp  # as configured, not rounded to 0.000
