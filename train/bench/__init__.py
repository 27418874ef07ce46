"""`bench`: throughput figures, each printed with the machine it was measured on.

    bench model [--set model.size=base --set data.batch_size=32 --optimizer]  the model alone on synthetic tensors
    bench loader SHARDS [--loader dali|reference] [--mode finetune]         a loader alone: clips/s and samples/s
    bench decode SHARDS [--decode-pipelines 1 2 4 7 --threads 4 8]          NVDEC against CPU decoding: the fastest
    bench masks [--set data.batch_size=64]                                  drawing one batch of masks on the device
    bench e2e SHARDS [--set model.size=tiny] [--rounds 3]                   a loader feeding training steps vs the
                                                                            model alone, median of alternating rounds
    bench loop SHARDS --config configs/X.yaml                               the train command on batches in memory vs
                                                                            the model alone: the loop's own cost

Every subcommand takes --config X.yaml and --set a.b=c as `train` does; add --json for one machine-readable line.
Modules: cli (arguments -> TrainConfig), model, loader (loader, decode, masks), e2e, loop, machine.
"""
