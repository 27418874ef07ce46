"""`train study --out DIR [--quick]`: VideoMAE's data-efficiency claim, in miniature, on one machine.

    data     the `study` synthetic collection (shard_tools/synthetic.py PRESETS): training clips in one look, test
             clips in another (new shapes, textures, backgrounds), and both again as single frames held still;
             sharded once per label fraction (the first fraction x N clips of each class as `train`, all test
             clips as `test`): DIR/shards/fraction-<pct>/, and DIR/shards/still/
    cells    pre-training (configs/study-pretrain.yaml) on every training clip without labels, then fine-tuning
             (configs/study-finetune.yaml); against the same fine-tuning from scratch, with the same steps; at each
             label fraction, and there too the control for the initialisation: fine-tuning from the pre-training
             model as it was before its first step (`untrained`); the ablations (tube / random / frame masking,
             mask ratio 0.5 / 0.75 / 0.9) at the smallest fraction; the single-frame baseline (from scratch on the
             still clips) at fraction 1; every cell with each seed. One run at a time, in this process
             (`train.train`); DIR/runs/<cell>-s<seed>/
    results  DIR/results.md and results.json (one row per cell: mean, spread, per-seed test top-1), plots in
             DIR/*.png, a reconstruction of test clips by the first tube-0.9 pre-trained model, and how its loss
             on training and on test clips splits between moving, flat and still cubes (results.json `target`)

A killed study resumes: runs with a summary.json are skipped, an unfinished one continues (--resume auto).

The study is built on the trainer and imports only what `train` exports; nothing in the trainer imports it.
    cells.py   the sizes, the starts, the masks, the cells
    data.py    the collection and its shard folders
    runner.py  every run
    target.py  where the pre-trained model's loss comes from
    report.py  the table and the plots
    cli.py     the command
"""

from train.study.cells import SIZES, study_cells
from train.study.target import CUBE_KINDS, target_report

__all__ = ["CUBE_KINDS", "SIZES", "study_cells", "target_report"]
