#!/usr/bin/env python
"""Train or evaluate CondInst / IUQ-CondInst with detectron2.

python train_net.py --config-file configs/Demo/shapes_CondInst.yaml
python train_net.py --config-file configs/CondInst/MS_R_50_1x.yaml --num-gpus 8
python train_net.py --config-file ... --eval-only MODEL.WEIGHTS model_final.pth
"""

from iuq_d2.engine.entry import build_argument_parser, run

if __name__ == "__main__":
    args = build_argument_parser().parse_args()
    print("Command Line Args:", args)
    run(args)
