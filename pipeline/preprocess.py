"""Beam job: raw items and events -> tokenised TFRecords, vocabularies and stats.

    ebr preprocess --raw data/small/raw --out data/small/processed
    ebr preprocess --raw gs://b/raw --out gs://b/processed --runner=DataflowRunner \\
        --project=P --region=R --temp_location=gs://b/tmp --setup_file=./setup.py

Options the command does not know must be Beam pipeline options (passed through
unchanged); anything else is an error. Without --runner the job runs on the DirectRunner in
multi-processing mode with one worker per CPU core.

The job fails loudly (non-zero exit, a message naming the table, file or field) when the
input is unusable: a CSV header or Parquet schema without a required column, an output the
runner cannot write (checked before the job starts), an empty table, a share of valid
records below --min-valid-share, or no training example at all.

Output layout (OUT):
    train/part-*.tfrecord.gz   one tf.train.Example per (search, positive item), days 1..train_days
    test/part-*.tfrecord.gz    the same for the test days (day train_days+1 ...)
    items/part-*.tfrecord.gz   item-tower features of every valid catalog item
    vocab/<name>.txt           one per features.vocab.VOCABS, most frequent first
    vocab/user_dict.txt        the tokenizer's user dictionary (brands, categories)
    vocab/tokenizer.json       the tokenizer's settings (text units)
    vocab/item_freq.tsv        item_id <TAB> training examples with it as the positive
    users/part-*.tsv.gz        one line per user: user id (JSON) <TAB> history record (JSON)
    user_store/users.sqlite    the user feature store serving reads, built from users/ by the driver
    dead_letter/part-*.jsonl   {source, reason, detail, record[, file]} per unusable record
    stats.json                 counts that reconcile (see docs/data.md)
"""
from __future__ import annotations

import difflib
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from datetime import date, datetime

from features import io as fio
from features import logs
from features.history import USER_STORE_DIR, USER_STORE_FILE
from features.tokenizer import TEXT_UNITS
from pipeline import contract, runner_guard
from pipeline.timeline import DEFAULT_MAX_USER_EVENTS
from pipeline.user_store import USERS_DIR, build_user_store

ACCEPTS_EXTRA_ARGS = True
WORK_DIR = ".work"  # the job's small side outputs, read back into stats.json, then removed
OUTPUT_DIRS = ("train", "test", "items", "users", "dead_letter")
SKIP_REASONS = (
    "positive_outside_window",  # positives (search, item) of searches outside the window
    "positive_query_without_tokens",  # positives of queries that normalise to nothing
    "search_without_positive",  # searches (only cart/collect under them)
    "events_over_user_cap",  # events of over-active users beyond --max-user-events
    "positive_before_window",  # the part of positive_outside_window before it (history, by design)
    "positive_after_window",  # the part after it: a sign of a wrong --test-date
)
POSITIVE_SKIP_REASONS = SKIP_REASONS[:2]
READ_NOTES = ("blank_lines", "lines_split_at_cr")  # lines that are not records, or hold two
DEFAULT_MIN_VALID_SHARE = 0.5
SOURCE_FILE = "source.json"  # in the raw directory, from a converter: {"text_units": "terms", ...}
REMOTE_ONLY_RUNNERS = ("DataflowRunner", "dataflow", "TestDataflowRunner")
DIRECT_RUNNERS = (None, "DirectRunner", "direct", "BundleBasedDirectRunner", "SwitchingDirectRunner")
SNIFF_BYTES = 1 << 16
log = logging.getLogger("ebr.preprocess")


class UnusableInput(ValueError):
    """The job ran but its input gave nothing usable (see `check_usable`); stats.json and
    the dead letters are written, so the cause can be read there."""


def add_arguments(parser) -> None:
    parser.add_argument("--raw", required=True, help="directory with items.* and events.* (jsonl, csv or parquet)")
    parser.add_argument("--out", required=True, help="output directory (local or a Beam file system URL)")
    parser.add_argument(
        "--test-date",
        default=None,
        help="first test day, YYYY-MM-DD (UTC); default: the date of the latest event",
    )
    parser.add_argument("--train-days", type=int, default=7, help="training days before the test date (default 7)")
    parser.add_argument("--test-days", type=int, default=1, help="test days from the test date (default 1)")
    parser.add_argument(
        "--shards", type=int, default=None, help="TFRecord shards per output (default: the runner decides)"
    )
    parser.add_argument(
        "--max-user-events",
        type=int,
        default=DEFAULT_MAX_USER_EVENTS,
        help=f"newest events kept per user; the rest are counted as skipped (default {DEFAULT_MAX_USER_EVENTS})",
    )
    parser.add_argument(
        "--earliest-date", default=None,
        help=f"events before this UTC date are bad_ts (default {contract.EARLIEST_DATE})",
    )
    parser.add_argument(
        "--latest-date", default=None,
        help=f"events after this UTC date are bad_ts (default: {contract.FUTURE_DAYS} day after today)",
    )
    parser.add_argument(
        "--min-valid-share", type=float, default=DEFAULT_MIN_VALID_SHARE,
        help="fail when a table's share of valid records is below this, 0..1 "
             f"(default {DEFAULT_MIN_VALID_SHARE}; 0 accepts any)",
    )
    parser.add_argument(
        "--text-units", choices=TEXT_UNITS, default=None,
        help="chars: characters and character bigrams of the text (default); terms: the text is "
             f"pre-tokenised term ids (RAW/{SOURCE_FILE} from `ebr convert` says so)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress and no summary")


def main(args) -> int:
    stats = run(
        args.raw,
        args.out,
        test_date=args.test_date,
        train_days=args.train_days,
        test_days=args.test_days,
        shards=args.shards,
        beam_args=list(getattr(args, "extra_args", None) or []),
        max_user_events=args.max_user_events,
        quiet=args.quiet,
        earliest_date=args.earliest_date,
        latest_date=args.latest_date,
        min_valid_share=args.min_valid_share,
        text_units=args.text_units,
    )
    return 0 if all(stats["reconcile"].values()) else 1


def parse_date(value, option: str = "--test-date") -> date | None:
    if isinstance(value, datetime):
        return value.date()
    if value is None or isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"{option} {value!r} is not a date (YYYY-MM-DD)") from None


def check_beam_args(beam_args) -> None:
    """Every pass-through argument must be a Beam pipeline option: a typo such as
    `--trian-days` would otherwise be dropped by Beam with a log line nobody reads."""
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    for cls in PipelineOptions.__subclasses__():
        cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(list(beam_args or []))
    unknown = [a for a in unknown if a.startswith("-")]
    if not unknown:
        return
    import argparse

    own = argparse.ArgumentParser()
    add_arguments(own)
    known = list(own._option_string_actions) + list(parser._option_string_actions)
    hints = []
    for arg in unknown:
        close = difflib.get_close_matches(arg.split("=", 1)[0], known, n=1)
        hints.append(f"{arg}" + (f" (did you mean {close[0]}?)" if close else ""))
    raise ValueError(f"unknown option {', '.join(hints)}: neither an option of ebr preprocess nor a Beam "
                     "pipeline option")


def _runner_name(options) -> str | None:
    from apache_beam.options.pipeline_options import StandardOptions

    runner = options.view_as(StandardOptions).runner
    if runner is not None and not isinstance(runner, str):
        runner = getattr(runner, "__name__", type(runner).__name__)
    return runner


def check_output(out_dir: str, options) -> None:
    """Fails before the job when the runner could not write OUT: a local path on
    Dataflow, a scheme Beam or TensorFlow's record writer lacks, no permission."""
    from apache_beam.io.filesystems import FileSystems

    runner = _runner_name(options)
    # Flink and Spark workers may share a mounted volume with the driver (k8s/: /store);
    # Dataflow's workers never see this machine's disk.
    if "://" not in out_dir and runner in REMOTE_ONLY_RUNNERS:
        raise ValueError(f"--out {out_dir} is a local path, but the {runner}'s workers run on other machines and "
                         "cannot write it; give a location they share (gs://...)")
    if "://" in out_dir:
        scheme = out_dir.split("://", 1)[0]
        try:
            FileSystems.get_filesystem(out_dir)
        except ValueError:
            raise ValueError(f"--out {out_dir}: Beam has no file system for {scheme}://") from None
    probe = fio.join(out_dir, WORK_DIR, "probe")
    try:
        fio.write_text(probe, "ok")
        FileSystems.delete([probe])
    except Exception as e:  # noqa: BLE001  (any file system error means the same thing here)
        raise ValueError(f"--out {out_dir} is not writable: {e}") from None


def pipeline_options(beam_args=None):
    """Beam options from pass-through arguments; on the DirectRunner (the default)
    multi-processing with one worker per core unless the arguments say otherwise."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    args = list(beam_args or [])
    runner = PipelineOptions(args).view_as(StandardOptions).runner
    if runner in (None, "DirectRunner", "direct", "BundleBasedDirectRunner"):
        if not any(a.startswith("--direct_running_mode") for a in args):
            args.append("--direct_running_mode=multi_processing")
        if not any(a.startswith("--direct_num_workers") for a in args):
            args.append(f"--direct_num_workers={os.cpu_count() or 1}")
    if not any(a.startswith("--default_sdk_harness_log_level") for a in args):
        args.append("--default_sdk_harness_log_level=WARNING")  # workers log every channel at INFO
    return PipelineOptions(args)


def job_inputs(raw_dir: str, name: str) -> tuple[list[str], str, dict]:
    """Files, format and (for CSV) the header of each file of one input, each file
    checked before the job starts: required columns (CSV header, Parquet schema), and
    a text encoding and line ends the job reads (`_sniff`)."""
    if "://" in raw_dir:
        paths = _match_remote(raw_dir, name)
    else:
        paths = [os.path.abspath(p) for p in contract.find_inputs(raw_dir, name)]
    fmt = contract.format_of(paths[0])
    headers = {}
    for p in paths:
        if fmt == "parquet":
            with _open(p) as f:
                contract.check_columns(p, name, contract.parquet_columns(f, p, name))
            continue
        head = _sniff(p)
        if fmt == "csv":
            headers[p] = contract.csv_columns(head.split(b"\n", 1)[0].decode("utf-8", "replace"))
            if not any(headers[p]):
                raise ValueError(f"{p}: empty CSV file, expected a header line")
            contract.check_columns(p, name, headers[p])
    return paths, fmt, headers


def _open(path: str):
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.open(path)  # decompresses by the suffix


def _sniff(path: str) -> bytes:
    """The first bytes of a text input, refused when the job would misread the whole file:
    UTF-16 (every line a bad_encoding) or old Mac line ends (CR only: one giant line)."""
    with _open(path) as f:
        head = f.read(SNIFF_BYTES)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ValueError(f"{path}: UTF-16 text; the contract wants UTF-8 (iconv -f UTF-16 -t UTF-8)")
    if b"\r" in head and b"\n" not in head and len(head) > 1:
        raise ValueError(f"{path}: old Mac line ends (CR only); the contract wants LF or CRLF (tr '\\r' '\\n')")
    return head


def _match_remote(raw_dir: str, name: str) -> list[str]:
    from apache_beam.io.filesystems import FileSystems

    patterns = contract.table_patterns(raw_dir.rstrip("/"), name, "/")
    paths = [m.path for r in FileSystems.match(patterns) for m in r.metadata_list]
    return contract.check_table_files(paths, raw_dir, name)


def text_units_of(raw_dir: str, text_units: str | None = None) -> str:
    """The tokenizer's text units: as given, else as RAW/source.json says, else chars."""
    if text_units is not None:
        return text_units
    path = fio.join(raw_dir, SOURCE_FILE)
    if not fio.exists(path):
        return "chars"
    units = json.loads(fio.read_text(path)).get("text_units", "chars")
    if units not in TEXT_UNITS:
        raise ValueError(f"{path}: text_units {units!r} is not one of {TEXT_UNITS}")
    return units


def _clean_outputs(out_dir: str) -> None:
    """Removes the outputs of an earlier run, so a run with fewer shards leaves no stale ones."""
    from apache_beam.io.filesystems import FileSystems

    patterns = [fio.join(out_dir, d, "part-*") for d in OUTPUT_DIRS]
    patterns += [fio.join(out_dir, "vocab", "*"), fio.join(out_dir, WORK_DIR, "*"), fio.join(out_dir, "stats.json")]
    patterns += [fio.join(out_dir, USER_STORE_DIR, USER_STORE_FILE)]
    old = [m.path for r in FileSystems.match(patterns) for m in r.metadata_list]
    if old:
        FileSystems.delete(old)


def build(p, raw_dir: str, out_dir: str, *, test_date=None, train_days=7, test_days=1, shards=None,
          max_user_events=DEFAULT_MAX_USER_EVENTS, plausible=None, text_units: str = "chars",
          progress_dir: str | None = None) -> dict:
    """Composes the job on pipeline `p`. Returns a description of its inputs.
    `plausible`: the events' contract.TsRange (default `TsRange.default()`)."""
    import apache_beam as beam

    from pipeline import transforms as T

    plausible = plausible or contract.TsRange.default()
    item_paths, item_fmt, item_headers = job_inputs(raw_dir, "items")
    event_paths, event_fmt, event_headers = job_inputs(raw_dir, "events")
    work_dir = fio.join(out_dir, WORK_DIR)
    vocab_dir = fio.join(out_dir, "vocab")
    num_shards = shards or 0

    items = p | "ReadItems" >> T.ReadRecords("items", item_paths, item_fmt, item_headers, None, progress_dir)
    events = p | "ReadEvents" >> T.ReadRecords("events", event_paths, event_fmt, event_headers, plausible,
                                               progress_dir)
    user_words = items.valid | "UserDictionary" >> T.UserDictionary()
    joined = {"items": items.valid, "events": events.valid} | "JoinCatalog" >> T.JoinCatalog(
        user_words, text_units, progress_dir)
    window = joined.latest | "ComputeWindow" >> T.ComputeWindow(test_date, train_days, test_days)
    examples = joined.events | "BuildExamples" >> T.BuildExamples(
        window, user_words, max_user_events, text_units, progress_dir)

    examples.train | "WriteTrain" >> T.WriteTFRecords(fio.join(out_dir, "train"), num_shards)
    examples.test | "WriteTest" >> T.WriteTFRecords(fio.join(out_dir, "test"), num_shards)
    examples.users | "WriteUsers" >> T.WriteUserHistories(fio.join(out_dir, USERS_DIR), num_shards)
    (
        joined["items"]
        | "SerializeItems" >> beam.Map(T.item_example)
        | "WriteItems" >> T.WriteTFRecords(fio.join(out_dir, "items"), num_shards)
    )
    (
        (items.dead, events.dead, joined.dead)
        | "DeadLetters" >> beam.Flatten()
        | "WriteDeadLetters" >> T.WriteDeadLetters(fio.join(out_dir, "dead_letter"))
    )
    sizes = (
        (items.tallies, events.tallies, joined.tallies, examples.tallies)
        | "Tallies" >> beam.Flatten()
        | "WriteTallies" >> T.WriteTallies(out_dir, work_dir)
    )
    user_dict = user_words | "SaveUserDict" >> beam.Map(T.save_user_dict, vocab_dir, text_units)
    (
        (sizes, user_dict)
        | "Sizes" >> beam.Flatten()
        | "MergeSizes" >> beam.CombineGlobally(T.merge_dicts)
        | "WriteSizes" >> beam.Map(T.write_json, fio.join(work_dir, "sizes.json"))
    )
    window | "WriteWindow" >> beam.Map(T.write_json, fio.join(work_dir, "window.json"))
    return {
        "items": {"format": item_fmt, "files": len(item_paths), "paths": item_paths},
        "events": {"format": event_fmt, "files": len(event_paths), "paths": event_paths},
        "plausible_ts": plausible.describe(),
        "text_units": text_units,
    }


def run(
    raw_dir: str,
    out_dir: str,
    *,
    test_date=None,
    train_days: int = 7,
    test_days: int = 1,
    shards: int | None = None,
    beam_args: list[str] | None = None,
    pipeline=None,
    max_user_events: int = DEFAULT_MAX_USER_EVENTS,
    quiet: bool = False,
    earliest_date=None,
    latest_date=None,
    min_valid_share: float = DEFAULT_MIN_VALID_SHARE,
    text_units: str | None = None,
) -> dict:
    """Runs the job and returns the stats dict (also written to OUT/stats.json).

    `pipeline`: a Beam pipeline to build on and run (tests pass a TestPipeline); by
    default one is made from `beam_args` (see `pipeline_options`). Raises ValueError for
    bad arguments or inputs before the job starts, and UnusableInput after it when
    nothing usable came out (`check_usable`).
    """
    import apache_beam as beam

    test_date = parse_date(test_date)
    plausible = contract.TsRange.default(parse_date(earliest_date, "--earliest-date"),
                                         parse_date(latest_date, "--latest-date"))
    if train_days < 1 or test_days < 1:
        raise ValueError(f"--train-days and --test-days must be >= 1, got {train_days}, {test_days}")
    if max_user_events < 1:
        raise ValueError(f"--max-user-events must be >= 1, got {max_user_events}")
    if shards is not None and shards < 1:
        raise ValueError(f"--shards must be >= 1, got {shards}")
    if not 0 <= min_valid_share <= 1:
        raise ValueError(f"--min-valid-share must be in 0..1, got {min_valid_share}")
    check_beam_args(beam_args)
    text_units = text_units_of(raw_dir, text_units)
    for name in ("items", "events"):
        job_inputs(raw_dir, name)  # fail on missing, mixed or malformed inputs before touching OUT
    options = pipeline.options if pipeline is not None else pipeline_options(beam_args)
    check_output(out_dir, options)
    _clean_outputs(out_dir)
    p = pipeline if pipeline is not None else beam.Pipeline(options=options)
    # Only the DirectRunner's workers share this machine's disk with the driver.
    progress = Progress(quiet or _runner_name(options) not in DIRECT_RUNNERS)
    inputs = build(
        p,
        raw_dir,
        out_dir,
        test_date=test_date,
        train_days=train_days,
        test_days=test_days,
        shards=shards,
        max_user_events=max_user_events,
        plausible=plausible,
        text_units=text_units,
        progress_dir=progress.directory,
    )
    runner_guard.install()  # Beam's data plane loses records of large bundles without it
    start = time.perf_counter()
    with logs.captured_stderr(), progress:  # the DirectRunner's worker processes log to fd 2
        result = p.run()
        result.wait_until_finish()
    seconds = time.perf_counter() - start
    window = _read_json(fio.join(out_dir, WORK_DIR, "window.json"), None) or {}
    user_store = build_user_store(out_dir, window.get("latest_event_ts"), progress=not quiet)
    stats = assemble_stats(out_dir, inputs=inputs, seconds=seconds, user_store=user_store)
    stats["step_seconds"] = step_seconds(result)
    if not all(stats["reconcile"].values()):
        log.error("preprocess: counts do not reconcile, records were lost inside the job: %s",
                  "; ".join(unreconciled(stats)))
    problems, warnings = check_usable(stats, min_valid_share)
    stats["problems"], stats["warnings"] = problems, warnings
    text = json.dumps(stats, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    fio.write_text(fio.join(out_dir, "stats.json"), text)
    _remove_work_dir(out_dir)
    if not quiet:
        print_summary(stats, out_dir)
    for w in warnings:
        log.warning("preprocess: %s", w)
    if problems:
        raise UnusableInput("the input gave nothing usable:\n  " + "\n  ".join(problems)
                            + f"\n(counts in {fio.join(out_dir, 'stats.json')}, records in "
                            f"{fio.join(out_dir, 'dead_letter')})")
    return stats


def step_seconds(result) -> dict:
    """Seconds spent in each top-level step of the job, summed over workers, from the
    runner's execution-time metrics (the DirectRunner reports them); {} when it has none."""
    try:
        counters = result.monitoring_metrics().query()["counters"]
    except Exception:  # noqa: BLE001  (a runner without these metrics: nothing to report)
        return {}
    totals: dict[str, float] = {}
    for c in counters:
        if c.key.step and c.key.metric.name.endswith("ptransform_execution_time:total_msecs:v1"):
            step = c.key.step.split("/", 1)[0]
            totals[step] = totals.get(step, 0.0) + (c.committed or 0) / 1000
    return {k: round(v, 2) for k, v in sorted(totals.items(), key=lambda kv: -kv[1]) if v > 0}


def unreconciled(stats: dict) -> list[str]:
    """What each count that does not reconcile is short of, in words."""
    dead = {src: sum(r.values()) for src, r in stats["dead_letter_by_source"].items()}
    out = []
    for source in ("items", "events"):
        if not stats["reconcile"].get(source, True):
            n_in, valid, d = stats[f"{source}_in"], stats[f"{source}_valid"], dead.get(source, 0)
            out.append(f"{source}: {n_in:,} read, {valid:,} valid and {d:,} dead letters, "
                       f"{n_in - valid - d:,} not accounted for")
    for name in ("positives", "users"):
        if not stats["reconcile"].get(name, True):
            out.append(f"{name} do not add up")
    return out


def check_usable(stats: dict, min_valid_share: float = DEFAULT_MIN_VALID_SHARE) -> tuple[list[str], list[str]]:
    """(problems, warnings) of a finished run: problems make the run fail (an empty
    table, too few valid records, no training example), warnings are printed."""
    problems, warnings = [], []
    inputs = stats.get("inputs") or {}
    for source in ("items", "events"):
        files = ", ".join((inputs.get(source) or {}).get("paths", [])[:3]) or source
        n_in, valid = stats[f"{source}_in"], stats[f"{source}_valid"]
        if n_in == 0:
            problems.append(f"{source}: no record in {files}")
            continue
        if valid / n_in < min_valid_share:
            reasons = sorted(stats["dead_letter_by_source"].get(source, {}).items(), key=lambda kv: -kv[1])
            top = ", ".join(f"{r} {n:,}" for r, n in reasons[:3])
            problems.append(f"{source}: {valid:,} of {n_in:,} records valid ({valid / n_in:.1%}), below "
                            f"--min-valid-share {min_valid_share:g}; most common reasons: {top} ({files})")
    w = stats.get("window") or {}
    if stats["events_valid"] and stats["examples_train"] == 0:
        problems.append(
            f"no training example: {stats['positives']:,} positives, "
            f"{stats['skipped']['positive_outside_window']:,} outside the window "
            f"(train {w.get('train_first_day')} .. {w.get('train_last_day')}, "
            f"latest event {w.get('latest_event')}); check --test-date and --train-days")
    after = stats["skipped"].get("positive_after_window", 0)
    if after:
        warnings.append(f"{after:,} positives are after the test window (last test day {w.get('test_last_day')}, "
                        f"latest event {w.get('latest_event')}): is --test-date right?")
    if stats["events_valid"] and stats["examples_test"] == 0:
        warnings.append("no test example: the test days have no search with a positive")
    return problems, warnings


class Progress:
    """Prints the job's progress every PRINT_SECONDS from the counts its workers write to a
    local directory (`pipeline.transforms.PROGRESS_KEYS`): the DirectRunner prints none."""

    PRINT_SECONDS = 5.0

    def __init__(self, off: bool = False, file=None):
        self.directory = None if off else tempfile.mkdtemp(prefix="ebr-progress-")
        self.file = file or sys.stdout
        self._stop = threading.Event()
        self._thread = None

    def totals(self) -> dict:
        from pipeline.transforms import PROGRESS_KEYS

        total = dict.fromkeys(PROGRESS_KEYS, 0)
        for name in os.listdir(self.directory):
            if name.endswith(".json"):
                try:
                    with open(os.path.join(self.directory, name), encoding="utf-8") as f:
                        for k, v in json.load(f).items():
                            total[k] = total.get(k, 0) + v
                except (OSError, ValueError):
                    continue  # being replaced
        return total

    def line(self, seconds: float) -> str:
        t = self.totals()
        return (f"  {seconds:5.0f} s  read items {t['items_in']:,}  events {t['events_in']:,}  |  joined "
                f"{t['events_valid']:,} events  |  users {t['users']:,}  examples "
                f"{t['examples_train'] + t['examples_test']:,}")

    def _loop(self):
        start = time.monotonic()
        while not self._stop.wait(self.PRINT_SECONDS):
            print(self.line(time.monotonic() - start), file=self.file, flush=True)

    def __enter__(self):
        if self.directory:
            self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread:
            self._stop.set()
            self._thread.join()
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)


def _read_json(path: str, default):
    return json.loads(fio.read_text(path)) if fio.exists(path) else default


def _remove_work_dir(out_dir: str) -> None:
    from apache_beam.io.filesystems import FileSystems

    work = fio.join(out_dir, WORK_DIR)
    if FileSystems.exists(work):
        FileSystems.delete([work])


def assemble_stats(out_dir: str, *, inputs: dict | None = None, seconds: float | None = None,
                   user_store: dict | None = None) -> dict:
    """stats.json from the job's side outputs and the user store's summary
    (`build_user_store`); checks that the counts reconcile."""
    work = fio.join(out_dir, WORK_DIR)
    counts = _read_json(fio.join(work, "counts.json"), {})
    sizes = _read_json(fio.join(work, "sizes.json"), {})
    window = _read_json(fio.join(work, "window.json"), None)
    by_source: dict[str, dict[str, int]] = {"items": {}, "events": {}}
    dead_letter: dict[str, int] = {}
    for key, n in counts.items():
        if key.startswith("dead_letter/"):
            _, source, reason = key.split("/", 2)
            by_source.setdefault(source, {})[reason] = n
            dead_letter[reason] = dead_letter.get(reason, 0) + n
    read = {k: counts.get(k, 0) for k in READ_NOTES}
    c = {k: counts.get(k, 0) for k in (
        "items_in", "items_valid", "events_in", "events_valid", "users", "users_capped", "searches",
        "searches_train", "searches_test", "positives", "examples_train", "examples_test",
    )}
    skipped = {r: counts.get(r, 0) for r in SKIP_REASONS}
    reconcile = {
        "items": c["items_in"] == c["items_valid"] + sum(by_source["items"].values()),
        "events": c["events_in"] == c["events_valid"] + sum(by_source["events"].values()),
        "positives": c["positives"]
        == c["examples_train"] + c["examples_test"] + sum(skipped[r] for r in POSITIVE_SKIP_REASONS),
    }
    if user_store is not None:
        reconcile["users"] = c["users"] == user_store["users"]
    if window is not None:
        latest = window.pop("latest_event_ts", None)
        window["latest_event"] = None if latest is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(latest))
    stats = {
        **c,
        "dead_letter": dict(sorted(dead_letter.items())),
        "dead_letter_by_source": {s: dict(sorted(r.items())) for s, r in by_source.items()},
        "skipped": skipped,
        "read": read,
        "vocab": {k.split("/", 1)[1]: v for k, v in sorted(sizes.items()) if k.startswith("vocab/")},
        "user_dict_words": sizes.get("user_dict", 0),
        "item_freq_items": sizes.get("item_freq_items", 0),
        "window": window,
        "reconcile": reconcile,
    }
    if user_store is not None:
        stats["user_store"] = user_store
    if inputs is not None:
        stats["inputs"] = inputs
    if seconds is not None:
        stats["seconds"] = round(seconds, 2)
    return stats


def _listing(counts: dict) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counts.items() if v) or "none"


def print_summary(stats: dict, out_dir: str, file=None) -> None:
    """A few lines: inputs, window, examples, what was skipped or dead-lettered, vocabularies."""
    file = file or sys.stdout
    w = stats.get("window") or {}
    dead = sum(stats["dead_letter"].values())
    lines = [
        f"preprocess: {out_dir}" + (f" ({stats['seconds']:.1f} s)" if "seconds" in stats else ""),
        f"  items   {stats['items_in']:>10,} in  {stats['items_valid']:>10,} valid",
        f"  events  {stats['events_in']:>10,} in  {stats['events_valid']:>10,} valid  "
        f"{stats['users']:,} users  {stats['searches']:,} searches",
        f"  window  train {w.get('train_first_day')} .. {w.get('train_last_day')}  "
        f"test {w.get('test_first_day')} .. {w.get('test_last_day')}",
        f"  examples train {stats['examples_train']:,}  test {stats['examples_test']:,}  "
        f"(positives {stats['positives']:,})",
        # positive_outside_window is the sum of the before / after parts listed
        f"  skipped {_listing({k: v for k, v in stats['skipped'].items() if k != 'positive_outside_window'})}",
        f"  dead letters {dead:,}" + (f" ({_listing(stats['dead_letter'])})" if dead else ""),
        f"  vocab {_listing(stats['vocab'])}",
    ]
    store = stats.get("user_store")
    if store:
        lines.append(f"  user store {store['users']:,} users as of {store['as_of_utc']}  "
                     f"{store['bytes'] / 2**20:.1f} MiB  {store['file']}")
    if not all(stats["reconcile"].values()):
        lines += [f"  ERROR: records lost inside the job: {u}" for u in unreconciled(stats)]
    lines += [f"  WARNING: {w}" for w in stats.get("warnings", [])]
    lines += [f"  ERROR: {p}" for p in stats.get("problems", [])]
    print("\n".join(lines), file=file)
