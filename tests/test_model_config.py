"""MGDSPRConfig: paper defaults, validation with clear errors, JSON files and overrides."""
import json

import pytest

from model.config import ABLATIONS, MGDSPRConfig, load_config, make_optimizer, parse_overrides


def test_defaults_are_the_papers_values():
    c = MGDSPRConfig()
    assert (c.embedding_dim, c.temperature, c.batch_size) == (128, 2.0, 256)
    assert (c.optimizer, c.learning_rate, c.clip_norm) == ("adagrad", 0.1, 3.0)
    assert (c.hard_negatives, c.mix_a, c.mix_b, c.num_heads, c.dropout) == (684, 0.4, 0.6, 8, 0.2)
    assert c.use_mgs and c.use_trm and c.use_mix and c.log_q_correction
    assert (c.loss, c.model) == ("softmax", "mgdspr")
    # The paper's N = 684 hard negatives must fit in the sampled pool of one query.
    assert c.batch_size - 1 + c.num_random_negatives >= c.hard_negatives


def test_hard_negatives_larger_than_the_pool_is_a_clear_error():
    with pytest.raises(ValueError, match=r"hard_negatives \(684\) exceeds.* = 255\); raise num_random_negatives to at least 429"):
        MGDSPRConfig(num_random_negatives=0)
    # Without I_mix the pool size does not matter.
    MGDSPRConfig(num_random_negatives=0, use_mix=False)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"embedding_dim": 100, "num_heads": 8}, "multiple of num_heads"),
        ({"mix_a": 0.7, "mix_b": 0.6}, "mix_a < mix_b"),
        ({"loss": "triplet"}, "loss must be"),
        ({"model": "dssm"}, "model must be"),
        ({"temperature": 0.0}, "temperature"),
        ({"batch_size": 1}, "batch_size"),
    ],
)
def test_invalid_values_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MGDSPRConfig(**kwargs)


def test_json_round_trip_and_file_plus_overrides(tmp_path):
    c = MGDSPRConfig(embedding_dim=32, num_heads=4, mlp_hidden_units=(64, 32))
    assert MGDSPRConfig.from_json(c.to_json()) == c
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"embedding_dim": 32, "num_heads": 4, "temperature": 1.5}))
    got = load_config(str(path), ["temperature=1", "use_mix=false", "mlp_hidden_units=16,8", "loss=hinge"])
    assert got.embedding_dim == 32 and got.temperature == 1.0 and got.use_mix is False
    assert got.mlp_hidden_units == (16, 8) and got.loss == "hinge"
    assert isinstance(got.temperature, float)


def test_unknown_keys_and_bad_overrides_are_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown MGDSPRConfig key.*'temprature'"):
        load_config(None, ["temprature=1"])
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"embeding_dim": 8}))
    with pytest.raises(ValueError, match="embeding_dim"):
        load_config(str(path))
    with pytest.raises(ValueError, match="use_mix=.*maybe"):
        parse_overrides(["use_mix=maybe"])
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["temperature"])


def test_ablation_presets_build_valid_configs():
    assert set(ABLATIONS) == {"mgdspr", "no_mgs", "no_trm", "tau1", "no_mix", "hinge", "mlp", "mlp_plain"}
    configs = {name: MGDSPRConfig(**values) for name, values in ABLATIONS.items()}
    assert configs["no_mgs"].use_mgs is False and configs["no_trm"].use_trm is False
    assert configs["tau1"].temperature == 1.0 and configs["no_mix"].use_mix is False
    assert configs["hinge"].loss == "hinge" and configs["mlp"].model == "mlp"
    assert configs["mgdspr"] == MGDSPRConfig()


def test_make_optimizer_is_adagrad_at_the_papers_rate():
    opt = make_optimizer(MGDSPRConfig())
    assert type(opt).__name__ == "Adagrad"
    assert float(opt.learning_rate) == pytest.approx(0.1)
    assert opt.global_clipnorm == pytest.approx(3.0)
    assert make_optimizer(MGDSPRConfig(clip_norm=0)).global_clipnorm is None


def test_presets_and_a_clear_error_for_an_unknown_name(tmp_path):
    from model.config import PRESETS

    assert load_config("paper") == MGDSPRConfig()  # the paper's values are the defaults
    quick = load_config("quick", ["seed=3"])
    assert (quick.optimizer, quick.seed) == (PRESETS["quick"]["optimizer"], 3)
    assert quick.hard_negatives <= (quick.batch_size - 1 + quick.num_random_negatives) // 10  # hard = a small share
    with pytest.raises(ValueError, match="neither a preset"):
        load_config("quik")
    path = tmp_path / "c.json"
    path.write_text('{"temperature": 1.0}', encoding="utf-8")
    assert load_config(str(path)).temperature == 1.0


def test_reports_record_paths_relative_to_the_repository():
    import os

    from benchmarks.reproduce import REPO, relative

    assert relative(os.path.join(REPO, "data", "medium", "processed")) == os.path.join("data", "medium", "processed")
    assert relative("/elsewhere/data") == "/elsewhere/data"


def test_a_finished_reproduce_run_with_another_config_is_not_reused(tmp_path):
    """`make reproduce` reuses finished runs; a run trained before a default or an override
    changed is trained again, not reported as the new model."""
    import json

    from benchmarks.reproduce import stale_settings
    from model.config import load_config

    result = tmp_path / "run.json"
    assert stale_settings(str(result), "quick", ["seed=1"]) == ""  # nothing yet: train it
    result.write_text(json.dumps({"config": json.loads(load_config("quick", ["seed=1"]).to_json())}))
    assert stale_settings(str(result), "quick", ["seed=1"]) == ""
    assert stale_settings(str(result), "quick", ["seed=1", "fusion_transformer_layers=2"]) == \
        "fusion_transformer_layers: 1 -> 2"
    # ... nor a run stopped by another rule (one from before the decay on a plateau has none)
    from benchmarks.convergence import parse_args, stopping_rule

    rule = stopping_rule(parse_args(["--data", "d", "--out", "o"]))
    assert stale_settings(str(result), "quick", ["seed=1"], rule).startswith("eval_every: None -> 250")
    result.write_text(json.dumps({"config": json.loads(load_config("quick", ["seed=1"]).to_json()), "rule": rule}))
    assert stale_settings(str(result), "quick", ["seed=1"], rule) == ""
    assert stale_settings(str(result), "quick", ["seed=1"], {**rule, "decays": 0}) == "decays: 1 -> 0"


def test_a_comparison_run_is_started_with_the_rule_it_records():
    """`make reproduce` starts each run with the flags of its own stopping rule, so the
    rule a run records is the rule the comparison checks it against."""
    from benchmarks import reproduce
    from benchmarks.convergence import parse_args, rule_flags, stopping_rule

    args = reproduce.parse_args(["--eval-every", "100", "--decay", "0.5", "--decays", "2", "--patience", "3",
                                 "--min-delta", "0.001", "--monitor-k", "50", "--max-steps", "900"])
    rule = stopping_rule(args)
    assert rule == {"eval_every": 100, "patience": 3, "min_delta": 0.001, "max_steps": 900, "monitor_k": 50,
                    "decay": 0.5, "decays": 2}
    assert stopping_rule(parse_args(["--data", "d", "--out", "o", *rule_flags(rule)])) == rule


def test_every_comparison_run_warms_up_unless_told_otherwise(tmp_path):
    """`make reproduce` trains every variant with the comparison's warm-up on top of its
    preset; a later --set of the same key wins, and a run made without it is retrained."""
    import json

    from benchmarks import reproduce
    from model.config import load_config

    args = reproduce.parse_args([])
    assert load_config(args.config, args.overrides).warmup_steps == 500
    assert load_config("quick").warmup_steps == 0  # `make train` and the demo do not warm up
    told = reproduce.parse_args(["--set", "warmup_steps=0", "seed=3"])
    assert load_config(told.config, told.overrides).warmup_steps == 0
    result = tmp_path / "run.json"
    result.write_text(json.dumps({"config": json.loads(load_config("quick", ["seed=0"]).to_json())}))
    assert reproduce.stale_settings(str(result), args.config, args.overrides + ["seed=0"]) == "warmup_steps: 0 -> 500"


def test_the_comparison_pairs_each_variant_with_mgdspr_seed_by_seed():
    from benchmarks.reproduce import paired_differences, paired_table

    def runs(name, values):
        per_seed = [{"seed": s, "metrics": {"recall": {"50": v}, "p_good": {"50": v}}} for s, v in values]
        spread = {"50": {"mean": 0.65, "std": 0.05, "n": len(values)}}
        return {"variant": name, "per_seed": per_seed, "metrics": {"recall": spread, "p_good": spread}}

    full = runs("mgdspr", [(0, 0.60), (1, 0.70), (2, 0.65)])
    other = runs("no_mgs", [(0, 0.62), (1, 0.71)])  # seed 2 has not run: only shared seeds pair
    d = paired_differences(other, full, "recall", "50")
    assert d["n"] == 2 and abs(d["mean"] - 0.015) < 1e-9 and abs(d["std"] - 0.00707) < 1e-4
    # Paired, the 10-point swing between seeds cancels: the table shows +1.50 ± 0.71.
    table = "\n".join(paired_table([full, other], full, ["50"]))
    assert "| no_mgs | 2 | +1.50 ± 0.71 |" in table


def test_the_training_table_shows_relevance_at_the_kept_step_and_at_its_peak():
    from benchmarks.reproduce import relevance_along

    curve = [{"step": 250, "val_p_good": 0.60}, {"step": 500, "val_p_good": 0.70}, {"step": 750, "val_p_good": 0.64}]
    result = {"per_seed": [{"best_step": 750, "curve": curve}, {"best_step": 500, "curve": curve},
                           {"best_step": 500, "curve": [{"step": 500}]}]}  # a run made before it was recorded
    assert relevance_along(result) == ("67.00", "70.00 (500/500)")
    assert relevance_along({"per_seed": [{"best_step": 500, "curve": [{"step": 500}]}]}) == ("-", "-")


def test_the_report_compares_relevance_at_the_recall_the_baseline_and_mgdspr_reach():
    from benchmarks.reproduce import recall_levels, relevance_at_recall

    def run(*points):
        return {"curve": [{"step": 250 * (i + 1), "val_recall": r, "val_p_good": g} for i, (r, g) in enumerate(points)]}

    mlp = {"variant": "mlp", "per_seed": [run((0.70, 0.72), (0.773, 0.69)), run((0.781, 0.70))]}
    full = {"variant": "mgdspr", "per_seed": [run((0.76, 0.74), (0.80, 0.71), (0.79, 0.73)), run((0.795, 0.69))]}
    other = {"variant": "no_mix", "per_seed": [run((0.75, 0.75)), run((0.78, 0.66)), {"curve": [{"step": 250}]}]}
    # Every seed of mlp reaches 77%, every seed of MGDSPR 79%: the lowest best, rounded down.
    assert recall_levels([mlp, full, other]) == [0.77, 0.79]
    assert relevance_at_recall(mlp, 0.77) == "69.50"  # 0.69 and 0.70: an earlier, more relevant point is below it
    assert relevance_at_recall(mlp, 0.79) == "never"
    assert relevance_at_recall(full, 0.79) == "71.00"  # seed 0 at its best point at or above the level, 0.73
    assert relevance_at_recall(other, 0.77) == "66.00 (1 of 2)"  # a run without val_p_good is not counted
    assert relevance_at_recall({"per_seed": [{"curve": [{"step": 250}]}]}, 0.5) == "-"


def test_a_report_rewritten_without_training_keeps_the_time_of_the_runs_invocation(tmp_path):
    import json

    from benchmarks.reproduce import previous_invocation

    results = [{"per_seed": [{"variant": "mgdspr", "seed": 0, "run_dir": "runs/reproduce/mgdspr-seed0"}]}]
    old = {"results": results, "runs_made": 24, "jobs": 2, "seconds": 6939.0, "machine": "AMD EPYC"}
    path = tmp_path / "reproduce.json"
    assert previous_invocation(str(path), results) is None
    path.write_text(json.dumps(old))
    assert previous_invocation(str(path), results) == {"runs_made": 24, "jobs": 2, "seconds": 6939.0,
                                                       "machine": "AMD EPYC"}
    more = [{"per_seed": results[0]["per_seed"] + [{"variant": "mgdspr", "seed": 1, "run_dir": "x"}]}]
    assert previous_invocation(str(path), more) is None  # other runs: the old time is not theirs
    again = [{"per_seed": [{**results[0]["per_seed"][0], "seconds": 480.0}]}]
    assert previous_invocation(str(path), again) is None  # the same run trained again


def test_the_report_states_the_stopping_rule_its_runs_had():
    from benchmarks.reproduce import rule_text

    report = {"monitor_k": 200, "eval_every": 250, "patience": 1, "max_steps": 4000, "min_delta": 0.002,
              "decay": 0.2, "decays": 1}
    text = rule_text(report)
    assert "every 250 steps" in text and "multiplies its learning rate by 0.2 (once)" in text
    assert "after that, the next evaluation without such a gain stops the run (at most 4000 steps)" in text
    old = {"monitor_k": 200, "eval_every": 250, "patience": 2, "max_steps": 2000}  # a report from before the decay
    assert "learning rate" not in rule_text(old)
    assert "2 evaluations without a gain of at least 0.2 points stop the run (at most 2000 steps)" in rule_text(old)


def test_reproduce_runs_jobs_at_once_in_seed_major_order_and_stops_on_a_failure():
    """`make reproduce --jobs N`: at most N runs under way, started seed by seed, every
    result kept under its (variant, seed); a failed run raises and nothing queued after
    it starts."""
    import threading
    import time

    from benchmarks.reproduce import run_all

    lock, live, peak, started = threading.Lock(), [0], [0], []

    def run(name, seed, fail=None):
        with lock:
            started.append((name, seed))
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        time.sleep(0.05)
        with lock:
            live[0] -= 1
        if (name, seed) == fail:
            raise RuntimeError(f"{name} seed {seed} failed")
        return {"variant": name, "seed": seed, "steps": 1, "best_step": 1,
                "metrics": {"k": [50], "recall": {"50": 0.5}, "p_good": {"50": None}}}

    todo = [(v, s) for s in (0, 1, 2) for v in ("mlp", "mgdspr")]
    done = run_all(todo, run, jobs=2)
    assert peak[0] == 2 and sorted(started) == sorted(todo) and started[:2] == todo[:2]
    assert all(done[key]["variant"] == key[0] and done[key]["seed"] == key[1] for key in todo)

    started.clear()
    with pytest.raises(RuntimeError, match="mgdspr seed 0 failed"):
        run_all(todo, lambda n, s: run(n, s, fail=("mgdspr", 0)), jobs=1)
    assert started == todo[:2]


def test_a_warmup_rises_linearly_to_the_rate_which_a_run_can_then_lower():
    """`warmup_steps`: step s trains at rate * (s + 1) / warmup_steps until the rate is
    reached; `rate_variable` is what a decay assigns, with or without a warm-up."""
    import tensorflow as tf

    from model.config import MGDSPRConfig, make_optimizer, rate_variable

    variables = {}

    def rates(optimizer, steps):
        v, seen = variables.setdefault(id(optimizer), tf.Variable([1.0])), []
        for _ in range(steps):
            optimizer.apply_gradients([(tf.constant([0.0]), v)])
            seen.append(float(optimizer.learning_rate))  # the rate this step ran at
        return seen

    warm = make_optimizer(MGDSPRConfig(optimizer="adam", learning_rate=0.01, warmup_steps=4))
    assert rates(warm, 6) == pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01])
    rate_variable(warm).assign(0.002)
    assert rates(warm, 1) == pytest.approx([0.002])
    plain = make_optimizer(MGDSPRConfig(optimizer="adam", learning_rate=0.01))
    assert rates(plain, 2) == pytest.approx([0.01, 0.01])
    rate_variable(plain).assign(0.002)
    assert rates(plain, 1) == pytest.approx([0.002])
    # Training wraps the optimizer (summed clipping): the wrapper keeps the same schedule.
    from model.train import summed_clipping

    fresh = make_optimizer(MGDSPRConfig(optimizer="adam", learning_rate=0.01, warmup_steps=4))
    wrapped = summed_clipping(fresh)
    assert rate_variable(wrapped) is rate_variable(fresh)
    assert rates(wrapped, 2) == pytest.approx([0.0025, 0.005])
    with pytest.raises(ValueError, match="warmup_steps"):
        MGDSPRConfig(warmup_steps=-1)


def test_the_report_splits_recall_by_the_clicks_relevance_and_marks_runs_made_before():
    """reproduce.md's Recall@K of the relevant clicks and of the noise, mean over seeds;
    a variant whose runs predate the split shows "-" instead of failing the report."""
    from benchmarks.reproduce import aggregate, markdown

    def run(variant, seed, relevant=None):
        metrics = {"k": [50], "recall": {"50": 0.6}, "p_good": {"50": 0.7}, "p_good_ceiling": {"50": 0.9},
                   "filter_pass": {"50": 0.8}, "slices": {}}
        if relevant is not None:
            metrics.update(recall_relevant={"50": relevant}, recall_irrelevant={"50": relevant / 4},
                           positives_relevant=0.88)
        return {"variant": variant, "seed": seed, "metrics": metrics, "steps": 500, "best_step": 250,
                "train_seconds": 60.0, "plateau": True, "decay_steps": [], "curve": [], "seconds": 70.0}

    results = [aggregate([run("mgdspr", 0, 0.70), run("mgdspr", 1, 0.72)]), aggregate([run("mlp", 0)])]
    report = {"k": [50], "results": results, "world": "w", "scale": "medium", "world_seed": 7, "examples_train": 1,
              "items": 10, "report_searches": 5, "config": "quick", "overrides": [], "model_seeds": [0, 1],
              "monitor_k": 50, "eval_every": 250, "patience": 1, "max_steps": 500, "runs_finished": 3, "runs": 3,
              "jobs": 1, "runs_made": 0, "seconds": 1.0, "machine": "m"}
    text = markdown(report)
    assert "on average 88.0% of them are relevant" in text
    assert "| mgdspr | 71.00 ± 1.41 | 17.75 ± 0.35 |" in text
    assert "| mlp | - | - |" in text
