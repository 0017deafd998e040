"""`make demo`'s driver: a world is generated and preprocessed once, then reused."""
import json
import os

from ebr import demo


def test_demo_prepares_the_world_once(tmp_path, capsys):
    data = str(tmp_path)
    assert demo.main(["--scale", "tiny", "--seed", "3", "--data", data]) == 0
    processed = os.path.join(data, "tiny", "processed")
    with open(os.path.join(processed, "stats.json"), encoding="utf-8") as f:
        stats = json.load(f)
    assert stats["examples_train"] > 0 and stats["examples_test"] > 0
    assert any(name.endswith(".tfrecord.gz") for name in os.listdir(os.path.join(processed, "train")))
    capsys.readouterr()
    # second run: nothing is regenerated, the summary comes from stats.json
    mtime = os.path.getmtime(os.path.join(processed, "stats.json"))
    assert demo.main(["--scale", "tiny", "--seed", "3", "--data", data]) == 0
    out = capsys.readouterr().out
    assert "is up to date" in out and f"test examples (day 8)         {stats['examples_test']}" in out
    assert os.path.getmtime(os.path.join(processed, "stats.json")) == mtime
    # another seed is another world
    assert demo.main(["--scale", "tiny", "--seed", "4", "--data", data]) == 0
    assert "generating the tiny synthetic world (seed 4)" in capsys.readouterr().out
