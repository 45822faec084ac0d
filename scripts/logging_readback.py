"""Reads mnemo's logging output back with the backends' own packages; prints JSON.

    logging_readback.py tensorboard LOGDIR
        Every run under LOGDIR through tensorboard's EventAccumulator (all scalars kept):
        {"tensorboard": version, "runs": {run: {"first_event": wall_time,
         "scalars": {tag: [[step, wall_time, value], ...]}}}}
    logging_readback.py wandb RUN_DIR
        The run's .wandb file through wandb's own reader (DataStore.open_for_scan,
        scan_data) and protobuf classes: {"wandb": version, "records": [record as
        MessageToDict, with "type"], "sync": {...}}. "sync" replays `wandb sync`'s record
        loop (wandb.sync.sync.SyncThread: its _robust_scan and _parse_pb) with the upload
        left out: which records it would send, in order, and whether it saw the run finish.
"""

import json
import os
import sys


def tensorboard(logdir):
    import tensorboard as tb
    from tensorboard.backend.event_processing import event_accumulator as ea

    runs = {}
    for dirpath, _, files in os.walk(logdir):
        if not any(".tfevents." in f for f in files):
            continue
        acc = ea.EventAccumulator(dirpath, size_guidance={ea.SCALARS: 0})
        acc.Reload()
        scalars = {
            tag: [[e.step, e.wall_time, e.value] for e in acc.Scalars(tag)]
            for tag in acc.Tags()["scalars"]
        }
        run = os.path.relpath(dirpath, logdir)
        runs[run] = {"first_event": acc.FirstEventTimestamp(), "scalars": scalars}
    return {"tensorboard": tb.__version__, "runs": runs}


def wandb_run(run_dir):
    import wandb
    from google.protobuf.json_format import MessageToDict
    from wandb.proto import wandb_internal_pb2

    wandb._set_internal_process(disable=True)  # DataStore asserts it runs "internally"
    from wandb.sdk.internal.datastore import DataStore
    from wandb.sync.sync import SyncThread

    names = [f for f in os.listdir(run_dir) if f.endswith(".wandb")]
    assert len(names) == 1, names
    path = os.path.join(run_dir, names[0])

    records = []
    ds = DataStore()
    ds.open_for_scan(path)
    while True:
        data = ds.scan_data()
        if data is None:
            break
        pb = wandb_internal_pb2.Record()
        pb.ParseFromString(data)
        d = MessageToDict(pb, preserving_proto_field_name=True)
        d["type"] = pb.WhichOneof("record_type")
        records.append(d)

    # `wandb sync`'s loop (SyncThread.run) without the SendManager: what it would send.
    st = SyncThread(sync_list=[], view=False, verbose=False, mark_synced=False)
    ds = DataStore()
    ds.open_for_scan(path)
    exit_pb, finished, sent = None, False, []
    while True:
        data = st._robust_scan(ds)
        if data is None:
            break
        pb, exit_pb, cont = st._parse_pb(data, exit_pb)
        if exit_pb is not None:
            finished = True
        if cont:
            continue
        sent.append(pb.WhichOneof("record_type"))
    return {
        "wandb": wandb.__version__,
        "file": path,
        "records": records,
        "sync": {"sent": sent, "finished": finished},
    }


if __name__ == "__main__":
    what, arg = sys.argv[1], sys.argv[2]
    out = tensorboard(arg) if what == "tensorboard" else wandb_run(arg)
    json.dump(out, sys.stdout)
    print()
