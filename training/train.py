"""Train one zoo model: `accelerate launch training/train.py --blueprint B --model NAME --out ZOO_DIR`."""

import sys

from vitzoo_hf.training import main

if __name__ == "__main__":
    sys.exit(main())
