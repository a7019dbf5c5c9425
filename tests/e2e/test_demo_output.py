"""What a person reads in `make demo`: the stages' own lines, each once; Ray's chatter filtered."""
from cluster.demo import LogFilter

# Lines as a followed Ray job log delivers them (ANSI colours, Ray records, every worker line twice;
# then a local-mode run, whose lines come from the job's own process).
RAW = """\
2026-12-02 04:48:13,792\tINFO job_manager.py:581 -- Runtime env is setting up.
Running entrypoint for job raysubmit_UCZZgyQMfyBT6JWT: /x/python -m cluster.demo --chain '[]'
wsdhq train: 1233 samples in 5 shards, 47 tag units, 2 worker(s), run /d/runs/wsdhq-8
2026-12-02 04:48:28,626\tINFO worker.py:1691 -- Using address 192.0.2.2:56897 set in the environment variable RAY_ADDRESS
\x1b[36m(TrainController pid=32332)\x1b[0m Requesting resources: {'CPU': 1.0} * 2
\x1b[36m(TrainController pid=32332)\x1b[0m [2026-12-02 04:48:54,523 E 32332 32362] core_worker.cc:2465: Actor with class name
\x1b[36m(RayTrainWorker pid=32471)\x1b[0m Loading faiss with AVX512 support.
\x1b[36m(RayTrainWorker pid=32445)\x1b[0m epoch 1/10 step 9 loss 0.6373 (emb 0.6373) 1864 samples/s data-wait 59%
\x1b[36m(RayTrainWorker pid=32445)\x1b[0m epoch 1/10 step 9 loss 0.6373 (emb 0.6373) 1864 samples/s data-wait 59%
\x1b[36m(RayTrainWorker pid=32445)\x1b[0m Checkpoint successfully created at: Checkpoint(filesystem=local, path=/d)
\x1b[36m(RayTrainWorker pid=32445)\x1b[0m Loading faiss with AVX2 support.\x1b[32m [repeated 2x across cluster]
\x1b[36m(RayTrainWorker pid=32445)\x1b[0m epoch 2/10 step 18 loss 0.5793 (emb 0.5793) qerr 0.00871 live 256
\x1b[36m(RayTrainWorker pid=32445)\x1b[0m epoch 2/10 step 18 loss 0.5793 (emb 0.5793) qerr 0.00871 live 256
wsdhq train: done, 10 epochs, final loss 0.3989
wsdhq train: 1233 samples in 5 shards, 47 tag units, 1 worker(s), run /d/runs/wsdhq-16
2026-12-02 10:16:21,361\tINFO config.py:145 -- Running in local mode. The training function will run in the same process.
epoch 1/10 step 19 loss 0.6127 (emb 0.6127) 819 samples/s data-wait 85%
2026-12-02 10:16:25,944\tINFO train_fn_utils.py:255 -- Reported metrics: {'epoch': 0, 'epochs': 10, 'step': 19}
WARNING clustering 1233 points to 256 centroids: please provide at least 9984 training points
"""


def test_the_demo_shows_each_stage_line_once_and_none_of_rays_chatter():
    f = LogFilter()
    half = len(RAW) // 2
    cut = RAW.rfind("\n", 0, half) + 1  # chunks arrive line-aligned from the job API
    shown = f(RAW[:cut]) + f(RAW[cut:])
    assert shown.splitlines() == [
        "    | wsdhq train: 1233 samples in 5 shards, 47 tag units, 2 worker(s), run /d/runs/wsdhq-8",
        "    | epoch 1/10 step 9 loss 0.6373 (emb 0.6373) 1864 samples/s data-wait 59%",
        "    | epoch 2/10 step 18 loss 0.5793 (emb 0.5793) qerr 0.00871 live 256",
        "    | wsdhq train: done, 10 epochs, final loss 0.3989",
        # a local-mode run (the same loop in the job's process): Ray's records and faiss's warning go
        "    | wsdhq train: 1233 samples in 5 shards, 47 tag units, 1 worker(s), run /d/runs/wsdhq-16",
        "    | epoch 1/10 step 19 loss 0.6127 (emb 0.6127) 819 samples/s data-wait 85%",
    ]
