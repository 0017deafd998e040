"""The demo: the whole path on a small synthetic world, as a short story.

    python -m ebr.demo --scale small --seed 7 --data data          # make demo
    python -m ebr.demo --until data                                # only the world and its preprocessing

Stages: generate the world; preprocess it with Beam; train MGDSPR briefly on an in-process
parameter-server cluster; export the towers and item vectors; build the sharded ScaNN
index; start the model server and the retrieval service, ask two users with different
histories their own day-8 query and a query without intent, print what each got back and
what relevance control removed, and stop the servers. Each stage is skipped when its
output already exists, so `make demo` is cheap to rerun; `--fresh` redoes everything.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import features  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
from features import logs
from pipeline.prepare import prepare_data


def print_summary(processed: str, stats: dict) -> None:
    rows = [
        ("events in", stats.get("events_in")),
        ("valid events", stats.get("events_valid")),
        ("searches", stats.get("searches")),
        ("training examples (days 1-7)", stats.get("examples_train")),
        ("test examples (day 8)", stats.get("examples_test")),
        ("dead letters", sum((stats.get("dead_letter") or {}).values())),
        ("skipped", json.dumps(stats.get("skipped") or {}, ensure_ascii=False)),
    ]
    vocab = stats.get("vocab") or stats.get("vocab_sizes") or {}
    if vocab:
        rows.append(("vocabulary sizes", ", ".join(f"{k} {v}" for k, v in sorted(vocab.items()))))
    width = max(len(r[0]) for r in rows)
    print(f"\nSummary of {processed}:")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


STAGES = ("data", "serve")


def run(cmd: list[str]) -> None:
    """One `ebr` command in a child process, its progress and summary shown as they come."""
    import subprocess

    # sys.stderr, not fd 2: this process diverts fd 2 (library logs), its children's progress must show
    out = subprocess.run([sys.executable, "-m", "ebr", *map(str, cmd)], stderr=sys.stderr)
    if out.returncode != 0:
        raise SystemExit(f"demo: `ebr {' '.join(map(str, cmd[:2]))} ...` failed (exit {out.returncode})")


def pick_users(processed: str, n: int = 2) -> list[dict]:
    """`n` users of the test day whose long histories lean to different top categories,
    with their own day-8 query: the demo's cast."""
    import glob
    from collections import Counter

    import tensorflow as tf

    from features.spec import parse_examples

    names = ("user_id", "query", "lt_top_cat", "st_top_cat", "rt_top_cat")
    files = sorted(glob.glob(os.path.join(processed, "test", "*.tfrecord.gz")))
    users: dict[str, dict] = {}
    for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(512):
        p = {k: v.numpy() for k, v in parse_examples(batch, names).items()}
        for r, uid in enumerate(p["user_id"]):
            uid = uid.decode()
            if uid in users:
                continue
            tops = Counter(t.decode() for k in names[2:] for t in p[k][r] if t)
            if sum(tops.values()) >= 10:
                users[uid] = {"user_id": uid, "query": p["query"][r].decode(), "tops": tops}
    cast: list[dict] = []
    for u in sorted(users.values(), key=lambda u: (-sum(u["tops"].values()), u["user_id"])):
        if all(u["tops"].most_common(1)[0][0] != c["tops"].most_common(1)[0][0] for c in cast):
            cast.append(u)
        if len(cast) == n:
            break
    return cast


def serve_and_ask(root: str, processed: str, cast: list[dict], k: int = 5) -> None:
    """Starts the model server and the retrieval service, asks each user's own day-8 query
    and a query without intent, prints the answers, stops both."""
    from serving.embeddings import titles
    from serving.model_server import ModelServer
    from serving.query import ask
    from serving.service import Service, ServiceConfig

    import logging

    exports, index = os.path.join(root, "exports"), os.path.join(root, "index")
    store = os.path.join(processed, "user_store")
    if not logs.verbose():  # the story says what the servers do; their own log lines would repeat it
        for name in ("ebr.model_server", "ebr.serve"):
            logging.getLogger(name).setLevel(logging.WARNING)
    server = ModelServer(exports, port=0, poll_seconds=0, num_versions=2)
    model_port = server.start()
    service = Service(ServiceConfig(export_root=exports, index_root=index, tf_serving=f"127.0.0.1:{model_port}",
                                    user_store=store if os.path.isdir(store) else None, deadline_ms=5000),
                      grpc_port=0, http_port=0)
    grpc_port, http_port = service.start()
    print(f"      model server (TF Serving protocol) on 127.0.0.1:{model_port}; retrieval service on "
          f"http://127.0.0.1:{http_port} and gRPC 127.0.0.1:{grpc_port}", flush=True)
    try:
        url = f"http://127.0.0.1:{http_port}"
        version = service.retriever.state
        for user in cast:
            lean = ", ".join(f"{t} {n}" for t, n in user["tops"].most_common(3))
            print(f"\nUser {user['user_id']}: history leans to {lean}", flush=True)
            for query in (user["query"], "新款"):
                body = ask(url, {"query": query, "user_id": user["user_id"], "k": k})
                names = titles(os.path.join(exports, str(version.model_version), "item_embeddings"),
                               [i["item_id"] for i in body["items"]])
                intents = ", ".join(body["intents"]) or "none"
                print(f'  "{query}": intents {intents}; relevance control removed {body["filtered"]} of '
                      f'{body["candidates"]} candidates; {body["timings_ms"]["total"]:.1f} ms', flush=True)
                for rank, item in enumerate(body["items"], 1):
                    print(f"    {rank}. {names.get(item['item_id'], item['item_id'])}  "
                          f"[{item['brand'] or '-'} / {item['leaf_cat']}]  {item['score']:.2f}", flush=True)
    finally:
        service.stop()
        server.stop()
    print("\nStopped both servers.", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ebr.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="small", choices=["tiny", "small", "medium", "large"])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--data", default="data", help="root folder; everything goes to DATA/SCALE/")
    parser.add_argument("--fresh", action="store_true", help="redo every stage even if its output exists")
    parser.add_argument("--until", choices=STAGES, default="serve",
                        help="data: only the world and its preprocessing; serve: the whole path (default)")
    parser.add_argument("--train-steps", type=int, default=120,
                        help="training steps of the demo's model (default 120: a few minutes on 2 cores)")
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                        help="model config overrides for the demo's training run")
    parser.add_argument("-v", "--verbose", action="store_true", help="also show the libraries' logs")
    args = parser.parse_args(argv)
    verbose = logs.configure(args.verbose)
    with logs.captured_stderr():  # this process loads TensorFlow too (the servers run in it)
        return story(args, verbose)


def story(args, verbose: bool) -> int:
    _, processed, stats = prepare_data(args.data, args.scale, args.seed, args.fresh,
                                       stages=2 if args.until == "data" else 6)
    print_summary(processed, stats)
    if args.until == "data":
        print(f"\nNext: `make train` trains MGDSPR on {processed} (in-process parameter-server "
              f"cluster) and evaluates it on the test day into reports/{args.scale}.")
        return 0
    import shutil

    root = os.path.join(args.data, args.scale)
    run_dir, exports, index = (os.path.join(root, d) for d in ("run", "exports", "index"))
    if args.fresh:
        for d in (run_dir, exports, index):
            shutil.rmtree(d, ignore_errors=True)
    flag = ["-v"] if verbose else []
    print(f"\n[3/6] training MGDSPR for {args.train_steps} steps on an in-process parameter-server cluster "
          f"(2 workers, 2 ps) into {run_dir}", flush=True)
    run([*flag, "train", "--data", processed, "--model-dir", run_dir, "--cluster", "local-ps", "--config", "quick",
         "--steps", args.train_steps, "--checkpoint-steps", 20,  # progress moves every 20 steps on PS
         *(["--set", *args.overrides] if args.overrides else [])])
    if not os.path.isdir(os.path.join(exports, "1")):
        print(f"[4/6] exporting the user tower, the item tower and every item's vector into {exports}", flush=True)
        run([*flag, "export", "--model-dir", run_dir, "--data", processed, "--out", exports])
    else:
        print(f"[4/6] {exports} holds an export already", flush=True)
    if not os.path.isdir(os.path.join(index, "1")):
        print(f"[5/6] building the sharded ScaNN index into {index}", flush=True)
        run([*flag, "index", "build", "--export", os.path.join(exports, "1"), "--out", index])
    else:
        print(f"[5/6] {index} holds an index already", flush=True)
    print("[6/6] starting the model server and the retrieval service", flush=True)
    cast = pick_users(processed)
    serve_and_ask(root, processed, cast)
    print(f"\nTry it yourself (the same commands, in three terminals):\n"
          f"  ebr model-server --export-root {exports} --port 8500 --num-versions 2\n"
          f"  ebr serve --export-root {exports} --index-root {index} --tf-serving 127.0.0.1:8500"
          f" --user-store {os.path.join(processed, 'user_store')}\n"
          f"  ebr query \"阿迪达斯 运动鞋\" --user {cast[0]['user_id'] if cast else 'u1'} --filtered "
          f"--export {os.path.join(exports, '1')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
