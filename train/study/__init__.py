"""`train study --out DIR [--quick] [--seeds 0,1,2]`: VideoMAE's data-efficiency claim, in miniature, on one machine.

    data     moving handwritten digits (shard_tools/digits.py: scikit-learn's 1,797 digit images, split by image into
             train, val and test), labelled by digit and, for the motion-only task, by direction; every clip sharded
             for pre-training, and per seed and label fraction the chosen training digits with every val and test
             clip (train/study/data.py)
    cells    pre-training (configs/study-digits-pretrain.yaml) on every training clip without labels, then
             fine-tuning (configs/study-digits-finetune.yaml) on 1, 5 and 10% of the labelled digits; against the
             same fine-tuning from the pre-training model's own initial weights (the untrained control) and from
             the classifier's initialisation (scratch); at 5%: pre-training masks tube 0.75 and random 0.9, and the
             motion-only task (label = direction); every cell with each seed, two runs at a time; DIR/runs/<run>/
    results  DIR/results.md and results.json: one row per cell (mean, spread, per-seed test top-1), the gains
             paired by seed, the validation curves of the fine-tunings; plots DIR/*.png; the first tube 0.9 model's
             loss on stroke cubes against the mean-prediction floor, and its reconstruction of test digits

A killed study resumes: runs with a summary.json are skipped, an unfinished one continues (--resume auto).

The study is built on the trainer and imports only what `train` exports; nothing in the trainer imports it.
    cells.py   the sizes, the starts, the masks, the cells
    data.py    the collections and their shard folders
    runner.py  every run
    target.py  what the pre-trained model predicts
    report.py  the tables and the plots
    cli.py     the command
"""

from train.study.cells import SIZES, study_cells
from train.study.target import target_report

__all__ = ["SIZES", "study_cells", "target_report"]
