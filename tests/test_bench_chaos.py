"""soak and fuzz, small: nothing lost while clients churn or send garbage,
through the installed gchat-bench console script."""

import json
import os
import subprocess
import sys


def run_bench(*args):
    exe = os.path.join(os.path.dirname(sys.executable), "gchat-bench")
    done = subprocess.run([exe, *args, "--json"], capture_output=True, text=True, timeout=240)
    assert done.stdout.strip(), done.stderr
    return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])


def test_soak_loses_nothing_while_clients_churn():
    code, res = run_bench(
        "soak",
        "--clients",
        "60",
        "--senders",
        "3",
        "--rate",
        "60",
        "--duration",
        "2",
        "--max-stay",
        "0.5",
        "--seed",
        "1",
    )
    assert code == 0
    assert res["sent"] > 60 and res["expected"] == res["sent"] * res["keepers"]
    assert res["received"] == res["expected"]
    assert (res["lost"], res["duplicated"], res["reordered"]) == (0, 0, 0)
    assert res["keepers_drained"] == res["keepers"] == 45
    assert res["sessions"] > 12  # the churners came and went several times each
    assert res["session_breaks"] == 0
    assert res["server_exit"] == 0


def test_fuzz_server_survives_and_well_behaved_clients_get_everything():
    code, res = run_bench(
        "fuzz",
        "--clients",
        "60",
        "--senders",
        "3",
        "--rate",
        "30",
        "--duration",
        "2",
        "--seed",
        "2",
        "--spawn=--flood-rate 20",
    )
    assert code == 0
    assert res["fuzz_bytes"] > 100_000 and res["sessions"] > 12
    assert res["received"] == res["expected"] > 0
    assert (res["lost"], res["duplicated"], res["reordered"]) == (0, 0, 0)
    assert res["server_alive"] and res["server_exit"] == 0
