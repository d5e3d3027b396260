"""The benchmark suite (`make bench`) at tiny sizes: it runs end to end, its table has a row per target, and every
figure in it is the ratio of measurements recorded in the same run (recomputed here independently)."""

import copy
import json
import statistics
import types

import pytest

from bench import run as bench


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    work = tmp_path_factory.mktemp("bench")
    out, raw = work / "BENCHMARKS.md", work / "results.json"
    code = bench.main(["--smoke", "--work", str(work), "--out", str(out), "--json", str(raw), "--quiet"])
    assert code == 0
    return json.loads(raw.read_text()), out.read_text()


def test_table_has_a_row_per_target_and_the_report_names_the_machine(smoke):
    res, md = smoke
    ids = [r["id"] for r in res["table"]]
    assert ids == ["1a", "1b", "1c", "1d", "1e", "1f", "2a", "3a", "4a", "4b", "5a", "5b", "5c", "6a", "6b", "6c"]
    assert "| # | measurement | measured | target | met |" in md
    for r in res["table"]:
        assert f"| {r['id']} | {r['what']} |" in md
    for key in (
        "**Machine**",
        "**CPU capability**",
        "**Versions**",
        "**Measured matmul peak**",
        "## 2b. Per-token loss modes: step time against SFT",
        "## 5. Anchor flips",
        "## 6. Diffusion sampler: parallel decoding, block-causal reading, the cache",
        "## What limits the rest",
        res["machine"]["versions"]["torch"],
        res["machine"]["date"],
        res["machine"]["cpu_capability"],
    ):
        assert key in md


def test_every_ratio_is_computed_from_the_measurements(smoke):
    res, _ = smoke
    rows = {r["id"]: r for r in res["table"]}
    sc = res["scoring"][0]
    n, c, t = sc["naive"], sc["chunked"], sc["t3s"]
    for path in (n, c, t):  # tokens/s and GFLOP/s from the recorded times
        med = statistics.median(path["times"])
        assert len(path["times"]) == res["sizes"]["reps"] and path["peak_rss_mib"] > 0
        assert path["tokens_per_s"] == pytest.approx(sc["batch"] * sc["length"] / med)
        assert path["gflops"] == pytest.approx(path["flops"] / med / 1e9)
    assert rows["1a"]["value"] == pytest.approx(t["peak_rss_mib"] / n["peak_rss_mib"])
    assert rows["1b"]["value"] == pytest.approx(t["tokens_per_s"] / n["tokens_per_s"])
    assert len(t["peak_samples"]) == res["sizes"]["reps"] + 1  # the peak, around every timed repetition
    dt = sc["peak_dtype"]  # bf16 on a CPU with fast bf16 (auto), float32 elsewhere
    assert dt == ("bfloat16" if "bfloat16" in t["precision"] else "float32")
    assert t["peak_gflops"][dt] == pytest.approx(statistics.median(x[dt] for x in t["peak_samples"]))
    assert rows["1c"]["value"] == pytest.approx(t["gflops"] / t["peak_gflops"][dt])
    assert rows["1d"]["value"] == pytest.approx(c["tokens_per_s"] / n["tokens_per_s"])
    assert rows["1e"]["value"] == pytest.approx(c["peak_rss_mib"] / n["peak_rss_mib"])
    assert rows["1f"]["value"] == pytest.approx(n["seconds"] / statistics.median(n["backbone_times"]))
    assert sc["max_abs_diff"] < 0.05 and sc["max_abs_diff_chunked"] < 0.05  # the same tokens scored (bf16 autocast)

    tr = res["training"][0]
    assert (
        len(tr["run_medians"]["sft"])
        == len(tr["run_medians"]["t3s"])
        == res["sizes"]["train"][0].get("reps", res["sizes"]["reps"])
    )
    assert 0 < tr["dropped_fraction"] < 1  # a real selection dropped some tokens, not all
    for r, seq in enumerate(tr["step_sequences"]):  # the two runs took their steps in turn, starting alternately
        first = ("sft", "t3s")[r % 2]
        assert seq == [first, ("t3s" if first == "sft" else "sft")] * res["sizes"]["train"][0]["steps"]
    assert rows["2a"]["value"] == pytest.approx(
        statistics.median(tr["run_medians"]["t3s"]) / statistics.median(tr["run_medians"]["sft"])
    )

    lo = res["losses"][0]  # each per-token loss mode against SFT, side by side
    assert [x["loss"] for x in lo["losses"]] == res["sizes"]["losses"][0]["losses"]
    for x in lo["losses"]:
        rm = x["run_medians"]
        assert len(rm["sft"]) == len(rm[x["loss"]]) == res["sizes"]["losses"][0]["reps"]
        assert x["ratio"] == pytest.approx(statistics.median(rm[x["loss"]]) / statistics.median(rm["sft"]))

    g = res["generation"][0]
    assert g["identical_outputs"] == g["prompts"]
    assert rows["3a"]["value"] == pytest.approx(
        statistics.median(g["times"]["loop"]) / statistics.median(g["times"]["batched"])
    )

    f = res["flips"]
    assert set(f["precisions"]) == {"float32", "bfloat16 autocast (fp32 weights)", "bfloat16 weights"}
    assert rows["5a"]["value"] == f["precisions"]["float32"]["flip_rate"] and rows["5a"]["target"] == 0.01
    assert rows["5b"]["target"] is None and rows["5c"]["target"] is None  # only the default has a target
    assert all(0 <= v["flip_rate"] <= 1 and v["seconds"] > 0 for v in f["precisions"].values())
    assert f["tokens"] > 0 and 0 <= f["reference_anchor_share"] <= 1

    tiny, llada = res["sampler"]  # each option's tokens/s and accuracy from its runs and graded answers
    assert list(tiny["options"]) == list(bench.BIDIRECTIONAL_OPTIONS)
    assert list(llada["options"]) == list(bench.SAMPLER_OPTIONS)
    for m in (tiny, llada):
        for o in m["options"].values():
            assert len(o["runs"]) == res["sizes"]["sampler"][0]["reps"] and o["forwards"] > 0
            assert o["tokens_per_s"] == pytest.approx(o["tokens"] / statistics.median(o["runs"]))
            assert o["accuracy"] == pytest.approx(sum(o["correct"]) / m["prompts"])
        assert m["options"]["as it was"]["same_as_first"] == 1.0
    fast, base = llada["options"][bench.SAMPLER_FAST], llada["options"]["as it was"]
    assert rows["6b"]["value"] == pytest.approx(fast["tokens_per_s"] / base["tokens_per_s"])
    assert rows["6b"]["target"] == bench.TARGETS["sampler_speed"] and rows["6a"]["target"] is None
    d = llada["options"][bench.SAMPLER_DEFAULT]
    assert rows["6c"]["value"] == pytest.approx(base["accuracy"] - d["accuracy"])
    assert rows["6c"]["target"] == pytest.approx((base["accuracy"] * (1 - base["accuracy"]) / llada["prompts"]) ** 0.5)

    p = res["pipeline"]
    for kind in ("sft", "offline", "online"):
        assert p["wall_s"][kind] == pytest.approx(statistics.median(r["wall_s"] for r in p["runs"][kind]))
        assert sum(p["breakdown"][kind].values()) == pytest.approx(p["wall_s"][kind])
    assert rows["4b"]["value"] == pytest.approx(p["wall_s"]["online"] / p["wall_s"]["sft"])
    kinds = {s["kind"] for s in p["runs"]["offline"][0]["stages"]}
    assert {"probe", "score", "select", "train", "eval"} <= kinds  # a real `t3s run`, every stage timed


def test_met_follows_the_measurements_not_the_other_way_round(smoke):
    res, _ = smoke
    res = copy.deepcopy(res)
    sc = res["scoring"][0]
    sc["t3s"]["peak_rss_mib"] = 0.2 * sc["naive"]["peak_rss_mib"]
    sc["t3s"]["tokens_per_s"] = 2.0 * sc["naive"]["tokens_per_s"]
    rows = {r["id"]: r for r in bench.summarize(res)}
    assert rows["1a"]["met"] is True and rows["1b"]["met"] is True
    sc["t3s"]["peak_rss_mib"] = 0.3 * sc["naive"]["peak_rss_mib"]
    sc["t3s"]["tokens_per_s"] = 1.7 * sc["naive"]["tokens_per_s"]
    res["pipeline"]["wall_s"]["online"] = 1.7 * res["pipeline"]["wall_s"]["sft"]
    res["generation"][0]["batch"] = 16  # the batch >= 16 target applies ...
    res["generation"][0]["tokens_per_s"] = {"batched": 5.0, "loop": 1.0}
    res["generation"][0]["identical_outputs"] -= 1  # ... and different outputs fail it whatever the speed
    res["flips"]["precisions"]["float32"]["flip_rate"] = 0.02  # the default flipping 2% misses its target
    rows = {r["id"]: r for r in bench.summarize(res)}
    assert rows["5a"]["met"] is False
    assert rows["1a"]["met"] is False and rows["1b"]["met"] is False and rows["4b"]["met"] is False
    assert rows["3a"]["value"] == pytest.approx(5.0) and rows["3a"]["met"] is False
    assert "**no**" in bench.table(list(rows.values()))


def test_render_rewrites_the_same_report_from_recorded_results(smoke, tmp_path):
    res, md = smoke
    raw, out = tmp_path / "results.json", tmp_path / "again.md"
    raw.write_text(json.dumps(res))
    assert bench.main(["--render", str(raw), "--out", str(out)]) == 0
    assert out.read_text() == md


def test_a_part_of_the_suite_reports_that_part_and_builds_only_its_models(smoke, tmp_path, monkeypatch):
    """`python -m bench.run --only sampler` (how a section is measured on its own): the report names that command
    and holds that section alone, and SmolLM2, which only the other parts read, is not converted."""
    res, _ = smoke
    part = {**copy.deepcopy(res), "only": ["sampler"], "peak": None, "flips": None, "pipeline": None}
    part |= {k: [] for k in ("scoring", "training", "losses", "generation")}
    rows = bench.summarize(part)
    assert [r["id"] for r in rows] == ["6a", "6b", "6c"]
    md = bench.report(part, rows)
    assert md.startswith("# Benchmarks (sampler only)\n")
    assert "Written by `python -m bench.run --only sampler` (part of `make bench`" in md
    assert "## 6. Diffusion sampler" in md
    for absent in ("## 1.", "## 2.", "## 2b.", "## 3.", "## 4.", "## 5.", "Written by `make bench`"):
        assert absent not in md, absent

    import t3s.smollm

    def no_smollm(*a, **k):
        raise AssertionError("SmolLM2 converted for a part that does not read it")

    monkeypatch.setattr(t3s.smollm, "build", no_smollm)
    runner = types.SimpleNamespace(say=lambda msg: None)
    assert set(bench._models(tmp_path, bench.FULL, runner, lambda k: k == "sampler")) == {"tiny"}
    with pytest.raises(AssertionError, match="SmolLM2 converted"):
        bench._models(tmp_path, bench.FULL, runner, lambda k: k == "generation")


def test_forced_weight_measurement_smoke(tmp_path, capsys):
    """bench/forced_weight.py end to end at tiny sizes: forced sets from a real (tiny) selector probe, and the
    measurement its docs table comes from."""
    import json as _json

    from bench import forced_weight

    assert forced_weight.main(["--smoke", "--work", str(tmp_path)]) == 0
    res = _json.loads((tmp_path / "results.json").read_text())
    assert set(res) >= {"none/one", "tau=0.2/one", "tau=0.2/inverse_t", "tau=0/one", "tau=0/inverse_t"}
    assert res["none/one"]["forced_share_of_loss"] == 0 and res["none/one"]["row_cv_vs_none"] == 1
    assert res["tau=0/one"]["forced_fraction"] > 0  # the probe's Δc gives a forced set even at these sizes
    for tau in ("tau=0.2", "tau=0"):
        if res[f"{tau}/one"]["forced_fraction"] > 0:  # 1/t up-weights the forced set
            assert res[f"{tau}/inverse_t"]["forced_share_of_loss"] > res[f"{tau}/one"]["forced_share_of_loss"]
    assert "| forced set | forced tokens |" in capsys.readouterr().out


def test_claims_tables_are_read_from_the_runs_files(tmp_path):
    """bench.claims renders its tables from summary.json / selection.json / rrt-sweep.json: fabricated files with
    known numbers give exactly those numbers (mean ± sd computed here independently)."""
    from bench import claims

    def summary(name, rows):
        d = tmp_path / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "summary.json").write_text(json.dumps({"seeds": [0, 1], "rows": rows}))
        return d

    def row(method, accs, drop=None):
        return {
            "method": method,
            "accuracy": statistics.fmean(accs),
            "per_seed": {str(i): a for i, a in enumerate(accs)},
            "dropped_fraction": drop,
        }

    t0 = summary(
        "t0", [row("base", [0.5]), row("sft", [0.2, 0.4], 0.0), row("t3s", [0.6, 0.8], 0.3), row("rrt", [0.1, 0.3])]
    )
    (t0 / "eval-base").mkdir()
    (t0 / "eval-base" / "samples.jsonl").write_text("{}\n" * 100)
    summary("auto", [row("base", [0.5]), row("t3s", [0.7, 0.7], 0.2)])
    for name, frac in (("t0", 0.3), ("auto", 0.2)):
        for s in (0, 1):
            d = tmp_path / name / f"seed-{s}" / "selections" / "t3s"
            d.mkdir(parents=True)
            (d / "selection.json").write_text(json.dumps({"stats": {"anchor_fraction": frac, "settled_fraction": 0.1}}))
    (tmp_path / "rrt-sweep.json").write_text(
        json.dumps(
            {
                "0/step-2": {"seed": 0, "step": 2, "accuracy": 0.25, "bottleneck": True},
                "1/step-2": {"seed": 1, "step": 2, "accuracy": 0.75, "bottleneck": False},
            }
        )
    )
    md = claims.render(tmp_path)
    assert "base model 50.0% on n = 100 prompts (standard error of one evaluation ≈ 5.0 points" in md
    sd = 100 * statistics.stdev([0.6, 0.8])
    assert f"| t3s | 70.0 ± {sd:.1f} | 70.0 ± 0.0 | – | 30.0 / 20.0 / – |" in md
    assert f"| sft | 30.0 ± {100 * statistics.stdev([0.2, 0.4]):.1f} |" in md
    assert "threshold 0: anchors 30.0%; threshold auto: anchors 20.0%, settled 10.0%" in md
    assert "| 2 | 25.0* | 75.0 |" in md


def test_students_table_reads_each_runs_records(tmp_path):
    from bench import claims

    world = tmp_path / "world"
    (world / "student").mkdir(parents=True)
    (world / "world.json").write_text(json.dumps({"config": {"seed": 7}}))
    run = tmp_path / "run"
    run.mkdir()
    rows = [
        {"method": "base", "accuracy": 0.8, "per_seed": {}},
        {"method": "sft", "accuracy": 0.15, "per_seed": {"0": 0.1, "1": 0.2}},
        {"method": "t3s", "accuracy": 0.7, "per_seed": {"0": 0.7, "1": 0.7}},
    ]
    probes = {
        "0": {"start_accuracy": 0.78, "bottleneck_accuracy": 0.0, "dip_found": True},
        "1": {"start_accuracy": 0.78, "bottleneck_accuracy": 0.05, "dip_found": False},
    }
    (run / "summary.json").write_text(
        json.dumps({"rows": rows, "probes": probes, "config": {"student": str(world / "student")}})
    )
    for s, frac in ((0, 0.1), (1, 0.2)):
        d = run / f"seed-{s}" / "selections" / "t3s"
        d.mkdir(parents=True)
        (d / "selection.json").write_text(json.dumps({"stats": {"anchor_fraction": frac}}))
    row = claims.students_table([run]).splitlines()[-1]
    sd = 100 * statistics.stdev([0.1, 0.2])
    assert row == f"| 7 | 80.0 | 78.0 → 0.0–5.0 (no dip in every seed) | 15.0 ± {sd:.1f} | 70.0 ± 0.0 | – | – | 15.0 |"


def test_gpu_check_runs_every_row_on_cpu_and_a_failed_comparison_fails(tmp_path, monkeypatch, capsys):
    """`make gpu-check`'s rows on CPU at smoke sizes (so the script cannot rot before a GPU is at hand): each row
    passes, the JSON and the table are written; a comparison outside its tolerance fails the row and the exit."""
    from bench import gpu_check

    out = tmp_path / "gc"
    assert gpu_check.main(["--out", str(out), "--device", "cpu", "--smoke"]) == 0
    results = json.loads((out / "gpu_check.json").read_text())
    assert list(results["rows"]) == list(gpu_check.ROWS)
    for name, row in results["rows"].items():
        assert row["ok"], (name, row.get("error") or row["figure"])
    train = results["rows"]["train-precision"]["values"]
    assert train["pure_bf16"]["moved"] < train["device"]["moved"]  # pure bf16 loses updates the default keeps
    md = (out / "gpu_check.md").read_text()
    for name in [*gpu_check.ROWS, *gpu_check.NOT_HERE]:
        assert f"| {name} |" in md
    assert all(line.count(" | ") == 4 for line in md.splitlines() if line.startswith("| "))  # one cell per column
    assert md in capsys.readouterr().out

    monkeypatch.setitem(gpu_check.TOL, "score_abs", -1.0)  # no max |Δ| can be below a negative tolerance
    assert gpu_check.main(["--out", str(tmp_path / "fail"), "--device", "cpu", "--smoke", "--only", "scoring"]) == 1
    row = json.loads((tmp_path / "fail" / "gpu_check.json").read_text())["rows"]["scoring"]
    assert not row["ok"] and "FAIL" in (tmp_path / "fail" / "gpu_check.md").read_text()
