"""The run directory of a trained model, shared by training, evaluation and export.

    MODEL_DIR/config.json        the full MGDSPRConfig
    MODEL_DIR/train_info.json    final checkpoint, vocab_dir, data_dir, table sizes, steps, timings
    MODEL_DIR/checkpoints/       tf.train.Checkpoint(model=...) per round; the last is final
    MODEL_DIR/backup/            BackupAndRestore state while training (resume after a kill)
    MODEL_DIR/logs/              TensorBoard
    MODEL_DIR/placement.json     PS clusters: the device of every variable part

    model, config, checkpoint, step = restore("runs/small", "data/small/processed")
"""
from __future__ import annotations

import json
import os
import shutil

CONFIG_FILE = "config.json"
INFO_FILE = "train_info.json"
PLACEMENT_FILE = "placement.json"
CHECKPOINT_DIR = "checkpoints"
BACKUP_DIR = "backup"
LOG_DIR = "logs"


def write_json(path: str, value) -> None:
    from features.io import write_text

    write_text(path, json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def check_model_dir(model_dir: str, config_json: str, fresh: bool) -> dict | None:
    """Refuses to resume a run with another config; returns a finished run's info."""
    from features.io import exists, join, read_text

    if fresh and os.path.isdir(model_dir):
        shutil.rmtree(model_dir)
    cfg_path = join(model_dir, CONFIG_FILE)
    if exists(cfg_path) and json.loads(read_text(cfg_path)) != json.loads(config_json):
        raise ValueError(
            f"{model_dir} holds a run with a different config ({cfg_path}); "
            "use another --model-dir or --fresh to start over"
        )
    info_path = join(model_dir, INFO_FILE)
    if exists(info_path):
        return json.loads(read_text(info_path))
    return None


def build(config, table_sizes, data_dir: str | None = None):
    """(model, optimizer); every variable is created now, so that a backup can be restored
    into them and, under a PS strategy, they are placed (and sharded) on the ps. With
    hashed or pre-mapped item ids, `data_dir` (a processed dir) fills the model's log-q
    table from its item frequencies (model.data.row_log_q); training needs it."""
    from model.config import make_optimizer
    from model.mgdspr import build_model

    model = build_model(config, table_sizes)
    model(model.dummy_inputs(), training=False)  # marks the Keras model built (BackupAndRestore checks)
    if data_dir is not None and model.item_log_q is not None:
        from features.io import join
        from model.data import ITEM_FREQ_FILE, row_log_q, vocab_dir
        from model.lookup import Lookup

        model.set_item_log_q(row_log_q(join(vocab_dir(data_dir), ITEM_FREQ_FILE), Lookup(vocab_dir(data_dir), config)))
    return model, make_optimizer(config)


def load_trained(model_dir: str):
    """(config, train info) of a trained model dir; without train_info.json (a run still
    going) the info names the latest checkpoint."""
    import features  # noqa: F401
    import tensorflow as tf

    from features.io import exists, join, read_text
    from model.config import MGDSPRConfig

    info_path = join(model_dir, INFO_FILE)
    if not exists(info_path):
        latest = tf.train.latest_checkpoint(join(model_dir, CHECKPOINT_DIR))
        if not latest:
            raise FileNotFoundError(f"no {info_path} and no checkpoint in {model_dir}; run `ebr train` first")
        info = {"checkpoint": latest, "data_dir": None}
    else:
        info = json.loads(read_text(info_path))
    config = MGDSPRConfig.from_json(read_text(join(model_dir, CONFIG_FILE)))
    return config, info


def checkpoint_step(path: str) -> int | None:
    """The step a checkpoint was saved at (`ckpt-400` -> 400)."""
    tail = path.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


def restore(model_dir: str, data_dir: str, checkpoint: str | None = None):
    """(model, config, checkpoint path, step): the model built in this process without any
    distribution strategy, its tower weights restored from `checkpoint` (default: the run's
    final one). A checkpoint written by a PS cluster holds whole tables, so it restores
    here whatever the sharding was."""
    import features  # noqa: F401
    import tensorflow as tf

    from model.data import vocab_dir
    from model.lookup import Lookup

    config, info = load_trained(model_dir)
    path = checkpoint or info["checkpoint"]
    table_sizes = Lookup(vocab_dir(data_dir), config).table_sizes
    if info.get("table_sizes") and info["table_sizes"] != table_sizes:
        raise ValueError(
            f"vocabularies in {vocab_dir(data_dir)} differ from the ones {model_dir} was trained on "
            f"({info.get('vocab_dir')}); use the same processed data"
        )
    model, _ = build(config, table_sizes)
    # Restore through the towers only: every tower weight must be in the checkpoint, while
    # optimizer slots and metric state (in the checkpoint or only in this program) are ignored.
    towers = tf.train.Checkpoint(user_tower=model.user_tower, item_tower=model.item_tower)
    status = tf.train.Checkpoint(model=towers).restore(path)
    status.expect_partial().assert_existing_objects_matched()
    return model, config, path, checkpoint_step(path)
