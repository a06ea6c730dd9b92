"""The demo end to end (quick scale) and its report: every section, every number, every figure."""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from preftune.cli import main
from preftune.commands.experiment import demo
from preftune.config import DemoConfig
from preftune.evaluate import paired_bootstrap
from preftune.experiments import DEMO_FILE, load_spec
from preftune.experiments.runners import RUNNERS
from preftune.report import results as report
from preftune.world import lists

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SECTIONS = ("methods", "vs-sft", "frontier", "offline-online", "overoptimisation", "diverse", "reward-model", "samples")


def test_paired_bootstrap_hand_values():
    a = [1.0, 2.0, 3.0, 4.0]
    assert paired_bootstrap(a, a) == (0.0, 0.0, 0.0)
    d, lo, hi = paired_bootstrap([x + 0.5 for x in a], a)  # a constant shift has no spread
    assert (d, lo, hi) == pytest.approx((0.5, 0.5, 0.5))
    d, lo, hi = paired_bootstrap([1.0, 0.0] * 50, [0.0] * 100, seed=3)
    assert d == 0.5 and lo < 0.5 < hi and lo > 0.35 and hi < 0.65
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [1.0, 2.0])


def test_group_tag_keeps_the_prompt_parseable():
    prompt = lists.prompts(1, seed=0)[0]["prompt"]
    tagged = lists.tag_prompt(prompt, "minority")
    assert "(minority)" in tagged and lists.parse_request(tagged) == lists.parse_request(prompt)


def test_demo_config_file_is_what_the_demo_runs_and_every_config_loads():
    assert Path("configs/demo.yaml").resolve() == DEMO_FILE.resolve()  # one file, shipped as package data
    for f in Path("configs").glob("*.yaml"):  # every shipped config names known experiments and valid stage settings
        spec = load_spec(f)
        assert set(spec["experiments"]) <= set(RUNNERS), f
        if f.name != "smollm2.yaml":  # the real model's file sets its own budget
            assert (
                spec["pipeline"]["rl"]["iterations"] == 24 and spec["pipeline"]["sft"]["train"]["epochs"] == 6.0
            )  # the demo's, unless set


def test_quick_lays_its_file_over_an_experiment(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("pipeline: {rl: {beta: 0.2}}\nexperiments: {overoptimisation: {comparisons: 300, lr: 1.0e-3}}\n")
    quick = load_spec(f, quick=True)
    assert quick["pipeline"]["rl"] == {"iterations": 6, "beta": 0.2} and quick["pipeline"]["world"]["sft"] == 800
    assert quick["experiments"] == {"overoptimisation": {"comparisons": 60, "iterations": 12, "lr": 1.0e-3}}
    assert "diverse" not in quick["experiments"]


def test_experiment_file_errors_are_clear(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiments: {nonsense: {}}\n")
    assert main(["experiment", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "unknown experiment" in capsys.readouterr().err
    bad.write_text("- just a list\n")
    assert main(["experiment", str(bad)]) == 2
    assert "expected a mapping" in capsys.readouterr().err
    bad.write_text("pipeline: {rl: {betta: 1}}\nexperiments: {methods: {}}\n")
    assert main(["experiment", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "pipeline.rl: RLConfig has no field 'betta'" in capsys.readouterr().err
    bad.write_text("seeds: [0, 0]\nexperiments: {methods: {}}\n")
    assert main(["experiment", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "'seeds' must be a list of distinct integers" in capsys.readouterr().err
    bad.write_text("experiments: {reward: {levers: {x: {pool: sum}}}}\n")  # pool belongs under reward:
    assert main(["experiment", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "lever 'x' has unknown setting(s) ['pool']" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before anything ran
    assert main(["report", str(tmp_path / "nowhere")]) == 2


class _Spans(HTMLParser):
    """Collects span.num (key, digits, text) and the visible text outside them."""

    def __init__(self):
        super().__init__()
        self.spans, self.outside, self.ids, self.imgs = [], [], set(), []
        self._in = None
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "span" and a.get("class") == "num":
            self._in = [a["data-key"], int(a["data-digits"]), ""]
        if tag in ("style", "title"):
            self._skip += 1
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.imgs.append(a["src"])

    def handle_endtag(self, tag):
        if tag == "span" and self._in is not None:
            self.spans.append(tuple(self._in))
            self._in = None
        if tag in ("style", "title"):
            self._skip -= 1

    def handle_data(self, data):
        if self._in is not None:
            self._in[2] += data
        elif not self._skip:
            self.outside.append(data)


def test_a_results_file_from_another_version_is_one_line_naming_file_and_key(tmp_path, capsys):
    """A results.json without a value the report reads (an older preftune's) is refused in one line,
    for the page and for --markdown, and no report.html is left behind."""
    res = json.loads((Path(__file__).parents[1] / "results/demo.json").read_text())
    del res["reward_model"]["gold_pair_accuracy"]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(res))
    for extra in ([], ["--markdown"]):
        assert main(["report", str(path), *extra]) == 2
        captured = capsys.readouterr()
        err = captured.err
        assert err.count("\n") == 1 and err.startswith(f"preftune report: error: {path}: no 'reward_model.gold_pair_accuracy'")
        assert "another preftune version" in err and "Traceback" not in captured.out + err
    assert not (tmp_path / "report.html").exists()


def test_a_results_file_whose_figure_data_lacks_a_key_is_one_line_naming_the_figure(tmp_path, capsys):
    """The figures read results.json too: a frontier point without its error bar is one line, not a KeyError."""
    res = json.loads((Path(__file__).parents[1] / "results/demo.json").read_text())
    del res["frontier"]["dpo"][0]["gold_ci95"]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(res))
    assert main(["report", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        f"preftune report: error: {path}: the frontier figure found no 'gold_ci95' in the results "
        "(written by another preftune version? run the experiment again)\n"
    )
    assert not (tmp_path / "report.html").exists()


def _check_spans(page: _Spans, saved: dict) -> None:
    """Each printed number is the results file's, rounded as its span says."""
    for key, digits, text in page.spans:
        value = saved
        for part in key.split("."):
            value = value[int(part)] if isinstance(value, list) else value[part]
        if value is None:
            assert text == "–", key
        elif isinstance(value, bool):
            assert text == ("yes" if value else "no"), key
        elif isinstance(value, str):  # the run's provenance: command, machine, date, version, commit
            assert text == value, key
        else:
            assert float(text) == pytest.approx(value, abs=0.5 * 10 ** -abs(digits) + 1e-9), key
            assert (text[0] in "+-") == (digits < 0) or value < 0, key


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    results = demo(DemoConfig(out=str(out), quick=True))
    return out, results


@pytest.mark.slow
def test_quick_demo_report_has_every_section_and_its_numbers_are_the_results(quick_demo):
    out, results = quick_demo
    assert set(results["policies"]) == set(report.HEADLINE) - {"grpo", "simpo", "grpo-gold"}  # the demo's methods table
    saved = json.loads((out / "results.json").read_text())
    page = _Spans()
    page.feed((out / "report.html").read_text())
    assert set(SECTIONS) <= page.ids
    assert len(page.spans) > 150
    _check_spans(page, saved)
    # no decimal number reaches the page except through a span (samples are model text, allowed)
    visible = " ".join(page.outside)
    visible = visible.split("8. Samples side by side")[0]
    assert not re.findall(r"\d+\.\d+", visible)
    for src in page.imgs:
        assert (out / src).stat().st_size > 1000
    assert {Path(s).stem for s in page.imgs} == {"methods", "frontier", "overoptimisation"}
    # `preftune report` re-renders the same page from results.json
    before = (out / "report.html").read_text()
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").read_text() == before


@pytest.mark.slow
def test_quick_demo_reuses_every_stage_when_run_again(quick_demo):
    out, _ = quick_demo
    again = demo(DemoConfig(out=str(out), quick=True))
    assert set(again["seconds"]) <= {"total"}  # no stage ran again
    assert again["policies"]["dpo"]["gold"] == json.loads((out / "results.json").read_text())["policies"]["dpo"]["gold"]


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
def test_report_renders_in_chromium_with_every_figure_loaded(quick_demo):
    from playwright.sync_api import sync_playwright

    out, _ = quick_demo
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto((out / "report.html").resolve().as_uri())
        page.wait_for_load_state("load")
        imgs = page.eval_on_selector_all("img", "els => els.map(e => [e.getAttribute('src'), e.complete, e.naturalWidth])")
        assert len(imgs) == 3
        assert all(complete and width > 100 for _, complete, width in imgs), imgs
        assert page.locator("h2").count() == 8
        browser.close()


def _claim(lo, hi, seeds=None):
    c = {"diff": (lo + hi) / 2, "lo": lo, "hi": hi}
    if seeds:
        c["seeds"] = {"diff": (seeds[0] + seeds[1]) / 2, "lo": seeds[0], "hi": seeds[1], "n": 3}
    return c


def test_verdicts_are_read_from_the_interval_and_from_seeds_when_there_are_seeds():
    assert report.compare(_claim(0.01, 0.2), "beats", "trails", "ties") == "beats"
    assert report.compare(_claim(-0.2, -0.01), "beats", "trails", "ties") == "trails"
    assert report.compare(_claim(-0.01, 0.2), "beats", "trails", "ties") == "ties"  # a positive mean is not enough
    assert report.compare(_claim(0.01, 0.2, seeds=(-0.05, 0.3)), "beats", "trails", "ties") == "ties"  # seeds overrule prompts
    assert report.compare(_claim(-0.01, 0.2, seeds=(0.02, 0.3)), "beats", "trails", "ties") == "beats"
    res = {"claims": {"a": _claim(0, 1), "b": _claim(0, 1), "beat_demonstrator": {"methods": [], "count": 0, "of": 2}}}
    assert report.comparisons(res) == 2


def test_seed_aggregation_hand_values():
    from preftune.experiments import aggregate

    def one(gold, diff):
        pol = {"gold": gold, "gold_ci95": 0.03, "kl": 1.0, "gold_per_prompt": [gold], "examples": ["x"]}
        claims = {"dpo_vs_sft": {"diff": diff, "lo": diff - 0.04, "hi": diff + 0.04, "significant": True}}
        return {
            "preftune": "0",
            "config": {},
            "run": {"seed": 0},
            "policies": {"dpo": pol},
            "claims": claims,
            "heldout_prompts": 1,
            "samples": [],
        }

    res = aggregate([one(0.5, 0.10), one(0.6, 0.02), one(0.7, 0.06)], [0, 1, 2])
    dpo = res["policies"]["dpo"]
    assert dpo["gold"] == pytest.approx(0.6) and dpo["kl"] == pytest.approx(1.0)
    assert dpo["gold_seeds_ci95"] == pytest.approx(4.303 * 0.1 / 3**0.5)  # t(2) · sd / sqrt(3)
    assert dpo["gold_ci95"] == pytest.approx(0.03 / 3**0.5)  # three independent means averaged
    c = res["claims"]["dpo_vs_sft"]
    assert c["diff"] == pytest.approx(0.06) and c["seeds"]["per_seed"] == [0.10, 0.02, 0.06]
    assert (c["seeds"]["lo"], c["seeds"]["hi"]) == pytest.approx((0.06 - 4.303 * 0.04 / 3**0.5, 0.06 + 4.303 * 0.04 / 3**0.5))
    assert c["lo"] > 0  # over prompts the pooled interval is clear of zero ...
    assert report.compare(c, "beats", "trails", "ties") == "ties"  # ... but the seeds disagree: 0.06 ± 0.099
    assert c["seeds"]["above"] == 3  # yet above zero on every seed


def test_the_alarms_section_prints_only_the_results_numbers(tmp_path, capsys):
    """An alarms results block (two seeds of a collapsing and a healthy DPO run) on the page and in
    Markdown: the table per run name, the detection sentence, and the collapse worked example."""
    from preftune.experiments.judge import alarm_outcome, alarm_summary, alarm_table

    def monitors(steps, gold, chosen):
        keys = ("logratio/rejected", "margin", "sample/kl", "sample/length", "sample/eos_rate", "eos_chosen")
        return [
            {"step": t, "sample/gold": g, "logratio/chosen": c, **{k: 0.25 * i for k in keys}}
            for i, (t, g, c) in enumerate(zip(steps, gold, chosen))
        ]

    runs = []
    for seed in (0, 1):
        steps, gold = [0, 40, 80, 120], [0.6, 0.7, 0.1 + 0.3 * seed, 0.6]
        bad = alarm_outcome(list(zip(steps, gold)), 120, [(80 - 40 * seed, "kl")], 0.2)
        runs.append({"name": "dpo-weak", "command": "dpo", "seed": seed, **bad, "monitors": monitors(steps, gold, [0, -1.5, -6.25, -2])})
        fine = alarm_outcome(list(zip(steps, [0.6, 0.65, 0.7, 0.7])), 120, [], 0.2)
        runs.append({"name": "dpo", "command": "dpo", "seed": seed, **fine, "monitors": monitors(steps, [0.6, 0.65, 0.7, 0.7], [0] * 4)})
    res = {
        "heldout_prompts": 0,
        "policies": {},
        "seconds": {"total": 1.0},
        "alarms": {"fall": 0.2, "runs": runs, "summary": alarm_summary(runs), "by_name": alarm_table(runs)},
    }
    (tmp_path / "results.json").write_text(json.dumps(res))
    assert main(["report", str(tmp_path)]) == 0
    page = _Spans()
    page.feed((tmp_path / "report.html").read_text())
    assert "alarms" in page.ids
    _check_spans(page, res)
    assert not re.findall(r"\d+\.\d+", " ".join(page.outside))
    capsys.readouterr()
    assert main(["report", str(tmp_path), "--markdown"]) == 0
    text = capsys.readouterr().out
    assert "| dpo-weak | 2 | 2 | 2 | 0 | 0 | 20 |" in text, text  # leads 0 and 40: median 20
    assert "| all runs | 4 | 2 | 2 | 2 | 0 | 20 |" in text
    assert "dpo-weak (seed 0), from step 40 to step 80" in text and "log π(chosen) − log π_ref(chosen) -1.50 → -6.25" in text


TIMES = {"seconds", "wall_s", "eval_s", "date"}  # wall-clock times, and the day a run was made


def _comparable(value, out: Path):
    """results.json without wall-clock times, and with the run's own directory written as OUT."""
    if isinstance(value, dict):
        return {k: _comparable(v, out) for k, v in value.items() if k not in TIMES}
    if isinstance(value, list):
        return [_comparable(v, out) for v in value]
    return value.replace(str(out), "OUT") if isinstance(value, str) else value


@pytest.mark.slow
def test_a_killed_quick_demo_resumes_to_the_same_results_in_a_fresh_directory(quick_demo, tmp_path):
    """Determinism and fault tolerance, pinned together: a second quick demo from nothing (same seed,
    machine and threads), SIGKILLed with its workers between two stages and then inside one and run
    again each time, writes the same results.json as the first, every number to the last bit, apart
    from times and paths."""
    out, _ = quick_demo
    again = tmp_path / "again"
    argv = [sys.executable, "-m", "preftune", "demo", "--quick", "--out", str(again)]
    kills = [f"stage:{random.Random(15).randint(1, 2)}", f"step@{random.Random(16).randint(2, 6)}"]
    for kill in kills:
        env = {**os.environ, "PREFTUNE_KILL_AT": kill, "PREFTUNE_KILL_GROUP": "1"}
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, start_new_session=True, timeout=600)
        assert proc.returncode == -signal.SIGKILL, (kill, proc.stderr[-2000:])
        assert not (again / "results.json").exists()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pretrain: reusing" in done.stdout  # a finished stage is kept; the killed one ran again
    first = _comparable(json.loads((out / "results.json").read_text()), out)
    second = _comparable(json.loads((again / "results.json").read_text()), again)
    assert first["policies"]["dpo"]["gold_per_prompt"] == second["policies"]["dpo"]["gold_per_prompt"]
    assert first == second


@pytest.mark.slow
def test_markdown_is_the_results_table_and_findings(quick_demo, capsys):
    out, results = quick_demo
    assert main(["report", str(out / "results.json"), "--markdown"]) == 0
    text = capsys.readouterr().out
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in text.splitlines() if line.startswith("| ")}
    for m, r in results["policies"].items():
        if m in report.TITLES:
            assert rows[report.TITLES[m]][1] == f"{r['gold']:.3f}", m
    assert f"makes {report.comparisons(results)} such comparisons" in text
    assert "Run: `preftune demo --quick`, seed 0" in text
    assert "SFT " in text and "DPO " in text  # the findings
    assert main(["report", str(out / "results.json"), "--markdown", "--samples", "2"]) == 0
    with_samples = capsys.readouterr().out
    assert with_samples.startswith(text) and with_samples.count("Samples for held-out prompt") == 2
    first = results["samples"][0]["completions"]
    for m in (m for m in report.TITLES if m in first):
        assert f"| {report.TITLES[m]} | `{first[m].replace(chr(10), '⏎')}` |" in with_samples or not first[m], m


@pytest.mark.slow
def test_reward_levers_one_row_each_on_the_demos_pipeline(quick_demo, tmp_path, capsys):
    """The reward-levers experiment reuses a finished pipeline (a copy of the quick demo's) and trains one
    reward model per lever; an ensemble's members differ, so its row is not its first member's."""
    out, _ = quick_demo
    run = tmp_path / "run"
    shutil.copytree(out, run)
    spec = tmp_path / "levers.yaml"
    spec.write_text(
        "experiments:\n  reward:\n    levers:\n"
        "      few: {comparisons: 100}\n"
        "      summed: {comparisons: 100, reward: {pool: sum}}\n"
        "      pair of seeds: {comparisons: 100, ensemble: 2}\n"
    )
    assert main(["experiment", str(spec), "--quick", "--out", str(run), "--workers", "1"]) == 0
    res = json.loads((run / "results.json").read_text())
    rows = {r["lever"]: r for r in res["reward_levers"]}
    assert list(rows) == ["few", "summed", "pair of seeds"]
    assert json.loads((run / "rm-summed" / "config.json").read_text())["preftune_reward_pool"] == "sum"
    assert (run / "rm-pair-of-seeds/member1/model.safetensors").exists()
    assert (
        rows["pair of seeds"]["gold_pair_accuracy"] != rows["few"]["gold_pair_accuracy"]
        or rows["pair of seeds"]["accuracy"] != rows["few"]["accuracy"]
    )
    assert all(0.0 <= r["gold_pair_accuracy"] <= 1.0 and 0.0 < r["accuracy_over_bayes"] for r in rows.values())
    capsys.readouterr()
    assert main(["report", str(run), "--markdown"]) == 0
    text = capsys.readouterr().out
    assert "| pair of seeds | " in text and "| gold itself |" in text
